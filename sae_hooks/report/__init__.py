"""Look, don't read: training curves and a self-contained HTML feature dashboard."""

from sae_hooks.report.build import build_report
from sae_hooks.report.contexts import Example, gather_examples
from sae_hooks.report.curves import plot_training, read_records
from sae_hooks.report.dashboard import Dashboard, build_dashboard, make_dashboard
from sae_hooks.report.features import FeatureStats, collect_features
from sae_hooks.report.rows import Rows

__all__ = [
    "Dashboard",
    "Example",
    "FeatureStats",
    "Rows",
    "build_dashboard",
    "build_report",
    "collect_features",
    "gather_examples",
    "make_dashboard",
    "plot_training",
    "read_records",
]
