"""Make nbs/images/umc_overview.png, the README's picture: score -> route -> allocate -> learn, on the benchmark fixture.
Run from the project root: .venv/bin/python nbs/images/make_overview.py (about a minute on two cores)."""
import tempfile
from pathlib import Path
import altair as alt
import numpy as np
import pandas as pd
from umc_nb.data import load_benchmark
from umc_nb.loop import Curator

ROUNDS, BUDGET = 4, 30
bm = load_benchmark(fixture=True)
cur = Curator.from_benchmark(bm, Path(tempfile.mkdtemp()) / 'store.sqlite', budget=BUDGET, router={'embedder': 'umap'},
                             train={'max_epochs': 15}, random_state=0, progress=False)
plan = cur.plan_round()
unseen = set(bm.domains.loc[~bm.domains.seen, 'name'])
t = plan.table[~plan.table['id'].isin(list(cur.seed_labels))].copy()
t['domain kind'] = np.where(t.domain.isin(unseen), 'unseen domain', 'seen domain')
cur.annotate(plan); cur.finish_round(plan)
hist = cur.run(ROUNDS)

W, H = 250, 210
score = alt.Chart(t.sample(min(len(t), 1500), random_state=0), title='1. Score: entropy and disagreement').mark_circle(
    size=14, opacity=.55).encode(x=alt.X('entropy_norm:Q', title='entropy H (normalised)'),
                                 y=alt.Y('disagreement_norm:Q', title='disagreement D (normalised)'),
                                 color=alt.Color('domain kind:N', title=None, scale=alt.Scale(range=['#9ecae9', '#e6550d']))
                                 ).properties(width=W, height=H)
rt = plan.routing
space = rt.clusters.groupby('space')['size'].sum().idxmax()
pts = rt.points[(rt.points.space == space) & (rt.points.kind == 'candidate')]
route = alt.Chart(pts, title=f'2. Route: uncertain {space} samples, clustered').mark_circle(opacity=.75).encode(
    x=alt.X('x:Q', title='UMAP 1', axis=alt.Axis(labels=False, ticks=False)),
    y=alt.Y('y:Q', title='UMAP 2', axis=alt.Axis(labels=False, ticks=False)),
    color=alt.Color('arm:N', legend=None, scale=alt.Scale(scheme='tableau10')),
    size=alt.Size('score:Q', legend=None, scale=alt.Scale(range=[10, 120]))).properties(width=W, height=H)
rows = [dict(round=r, domain=d, labels=n) for r, res in sorted(cur.results_.items()) for d, n in res.labelled_domains.items()]
alloc = alt.Chart(pd.DataFrame(rows), title='3. Allocate: labels per round by domain').mark_bar().encode(
    x=alt.X('round:O'), y=alt.Y('sum(labels):Q', title='labels'),
    color=alt.Color('domain:N', scale=alt.Scale(scheme='tableau20'))).properties(width=W - 80, height=H)
learn = alt.Chart(hist.melt(id_vars=['labels'], value_vars=['accuracy', 'worst_domain_accuracy'], var_name='metric'),
                  title='4. Learn: test accuracy of F').mark_line(point=True).encode(
    x=alt.X('labels:Q', title='curated labels'), y=alt.Y('value:Q', title='accuracy', scale=alt.Scale(zero=False)),
    color=alt.Color('metric:N', title=None, scale=alt.Scale(range=['#3182bd', '#e6550d']))).properties(width=W - 40, height=H)
chart = alt.hconcat(score, route, alloc, learn).resolve_scale(color='independent').properties(
    title=alt.TitleParams('umc_nb: label what the ensemble of specialists is unsure about', fontSize=15, anchor='start'))
out = Path(__file__).parent / 'umc_overview.png'
chart.save(str(out), scale_factor=1.5)
print(out, hist[['round', 'labels', 'accuracy', 'worst_domain_accuracy']].round(3).to_string(index=False))
