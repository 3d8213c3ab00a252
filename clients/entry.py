"""coop-client's and coop-complete's console scripts, guarded as coop-serve's are (serving/entry.py)."""

from __future__ import annotations

from coopnets.contract.flags import extra_main

client_main = extra_main("coop-client", "coopnets.clients.cli:client_main", (), "")
complete_main = extra_main("coop-complete", "coopnets.clients.cli:complete_main", (), "")
