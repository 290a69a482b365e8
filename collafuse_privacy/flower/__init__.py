"""CollaFuse over Flower (optional extra ``.[flower]``): a ``ServerApp`` that is the server and a
``ClientApp`` per client, on Flower's simulation engine or a localhost deployment
(``collafuse-privacy flower run``). ``plan.py`` (set-up), ``nodes.py`` (the parties) and ``collect.py`` (the
joined run layout) work without Flower; ``apps.py`` and ``launch.py`` need it."""
