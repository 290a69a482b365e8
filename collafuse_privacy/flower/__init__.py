"""CollaFuse over Flower (optional extra ``.[flower]``): a ``ServerApp`` that is the server and a
``ClientApp`` per client, on Flower's simulation engine or a localhost deployment
(``collafuse-privacy flower run``). ``parties.py`` holds the parties without Flower."""
