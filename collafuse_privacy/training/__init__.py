"""CollaFuse training: the session (``session.py``), the parties and one client's round
(``parties.py``), the server's round driver (``driver.py``), the in-process loop (``loop.py``)
and the privacy it spends (``privacy.py``). ``checkpoint.TrainingState`` is its ``state.pt``."""

from .driver import ServerRounds, check_losses
from .loop import Trainer, train
from .parties import (SERVER_STREAM, Client, ClientRound, Server, build_client_model, build_server_model, client_dp_on,
                      client_round, client_upload, make_client, make_server, receive_global, server_generator,
                      uploads_due)
from .session import Parties, Session, ensure_splits, refuse_audit_dir, server_side, write_view_meta

__all__ = ["SERVER_STREAM", "Client", "ClientRound", "Parties", "Server", "ServerRounds", "Session", "Trainer",
           "build_client_model", "build_server_model", "check_losses", "client_dp_on", "client_round", "client_upload", "ensure_splits",
           "make_client", "make_server", "receive_global", "refuse_audit_dir", "server_generator", "server_side",
           "train", "uploads_due", "write_view_meta"]
