"""Plain WebSocket, no Nexus client library: JSON-RPC text frames, answers matched by id.
Usage: python websocket_plain.py ws://127.0.0.1:8080/ root root
Needs: pip install websocket-client
"""
import json
import sys

import websocket  # websocket-client

def arg(i, default):
    return sys.argv[i] if len(sys.argv) > i else default


url, user, password = arg(1, "ws://127.0.0.1:8080/"), arg(2, "root"), arg(3, "root")
ws = websocket.create_connection(url)
next_id = 0


def call(method, params=None):
    global next_id
    next_id += 1
    ws.send(json.dumps({"jsonrpc": "2.0", "id": next_id, "method": method, "params": params or {}}))
    while True:
        answer = json.loads(ws.recv())
        if answer.get("id") == next_id:
            if "error" in answer:
                raise RuntimeError(answer["error"])
            return answer["result"]


print(call("sys.login", {"user": user, "pass": password}))
pipe = call("pipe.create", {"len": 100})["pipeid"]
call("topic.sub", {"pipeid": pipe, "topic": "demo.news"})
print(call("topic.pub", {"topic": "demo.news", "msg": {"hello": "world"}}))
print(call("pipe.read", {"pipeid": pipe, "max": 10, "timeout": 1}))
# A notification (no id): executed, never answered. Fire-and-forget publishing.
ws.send(json.dumps({"jsonrpc": "2.0", "method": "topic.pub", "params": {"topic": "demo.news", "msg": 2}}))
print(call("pipe.read", {"pipeid": pipe, "max": 10, "timeout": 1}))
ws.close()
