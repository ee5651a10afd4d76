# pytester runs inner pytest sessions: the plugin's own behaviour (markers, selection, hygiene) is tested through it.
pytest_plugins = ["pytester"]
