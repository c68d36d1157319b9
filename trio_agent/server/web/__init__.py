"""HTTP on the agent's port: the browser client, the demo page, health and metrics.

One listener speaks both protocols. :mod:`~trio_agent.server.web.front` reads each
connection's requests with h11; :mod:`~trio_agent.server.web.routing` decides where each
goes (a WebSocket upgrade to the agent's path leaves for trio-websocket with the
bytes already read); :mod:`~trio_agent.server.web.routes` answers the rest from files
kept in memory by :mod:`~trio_agent.server.web.assets`. ``docs/web.md`` documents the
endpoints and the JavaScript client in ``static/agent-client.js``.
"""
