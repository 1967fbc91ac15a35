"""The ``web`` export format (:mod:`zoo.exporters.web.exporter`) and the page that runs it
in a browser (:mod:`zoo.exporters.web.server`)."""
