"Shared pytest configuration: slow tests run only with UMC_SLOW=1 (or `-m slow`)."
import os
import pytest

def pytest_collection_modifyitems(config, items):
    if os.environ.get('UMC_SLOW') or 'slow' in (config.getoption('-m') or ''): return
    skip = pytest.mark.skip(reason='slow test: run with UMC_SLOW=1 (make test-slow)')
    for item in items:
        if 'slow' in item.keywords: item.add_marker(skip)
