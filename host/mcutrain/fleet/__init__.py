"""A fleet of boards learning together: federated on-device training with Flower.

Each board is a Flower client over its serial link (client_app.py over board_round.py); the
server runs a stock strategy (server_app.py, strategies.py); `mcutrain fleet` starts a local
run with emulated boards (launch.py). docs/fleet.md describes it all. Flower (host/
requirements-fleet.txt) is needed by client_app, server_app, strategies, records and launch's
runs; the other modules work without it.
"""

STRATEGIES = ("fedavg", "fedavgm", "fedadam")  # strategies.py builds them (Flower's FedAvg, FedAvgM, FedAdam)
