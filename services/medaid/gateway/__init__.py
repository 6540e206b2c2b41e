"""National-platform JSON gateway: POST /fsi/api/rsfComIfsService/callService with the national
envelope (infno 9001 / 1101 / 2206 / 2207 / 2208), answered through the router over gRPC."""
