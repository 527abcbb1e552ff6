"""The project's name and version, below everything else so that any module may read them."""

#: the name of pluggy's project and of the entry-point group plugins register under
PROJECT_NAME = "harness"
#: the name to install and depend on: ``harness`` on PyPI is an unrelated project, so the
#: distribution is ``tune-harness``; it installs the import package and the command
#: ``harness``
DISTRIBUTION_NAME = "tune-harness"

__version__ = "0.1.0"
