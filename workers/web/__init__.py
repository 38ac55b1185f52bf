"""The web app and REST API of ``deepscan serve``, and the static reports of ``deepscan report``."""
