"""coop-serve's console script: contract.flags.extra_main imports the server only inside main, so that an
environment whose protobuf another package pinned below what a gRPC package was generated for gets one line
with the command that fixes it, not a traceback."""

from __future__ import annotations

from coopnets.contract.flags import extra_main

serve_main = extra_main("coop-serve", "coopnets.serving.server:main", (), "")
