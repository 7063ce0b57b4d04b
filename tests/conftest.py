import sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared' / 'data' / 'binance'
sys.path.insert(0, str(Path(__file__).parent))

@pytest.fixture
def store(tmp_path, monkeypatch):
    "An empty candle store and reports folder, set through the environment as a user would."
    d = tmp_path / 'data'; r = tmp_path / 'reports'
    monkeypatch.setenv('TBOT_DATA_DIR', str(d)); monkeypatch.setenv('TBOT_REPORTS_DIR', str(r))
    return d

@pytest.fixture(scope='session')
def shared():
    assert SHARED.is_dir(), f"the shared real data is missing at {SHARED}"
    return SHARED
