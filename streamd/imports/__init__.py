"""Image import: the staging area, the import flow, its sources (web-download and the policy on what it
may reach) and the plugins that transform imported data."""

from .flow import ImportPlan, Importer
from .staging import StagedMeta, StagingArea

from .filtering import UriFilter, normalize_hostname
from .plugins import PluginOutcome, StagedImage, run_import_plugins
from .web import WebDownload, WebSourceOpener, open_web_source

__all__ = ["ImportPlan", "Importer", "PluginOutcome", "StagedMeta", "StagingArea", "StagedImage", "UriFilter", "WebDownload", "WebSourceOpener", "normalize_hostname",
           "open_web_source", "run_import_plugins"]
