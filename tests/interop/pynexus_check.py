"""Drives a running node with the published Python client pynexus2 (not written here), to
catch wire-format mistakes. Usage: pynexus_check.py TCP_PORT HTTP_PORT. Exits non-zero on
the first mismatch."""
import sys

import pynexus

tcp_port, http_port = sys.argv[1], sys.argv[2]


def check(cond, what):
    if not cond:
        print("FAIL:", what)
        sys.exit(1)
    print("ok:", what)


for url in (f"tcp://root:root@127.0.0.1:{tcp_port}", f"ws://root:root@127.0.0.1:{http_port}/"):
    scheme = url.split(":")[0]
    c = pynexus.Client(url)
    check(c.is_logged, f"{scheme}: root logs in through the URL ({c.login_error})")
    check(len(c.connid) == 16, f"{scheme}: connid has 16 chars")
    check(c.nexus_version == "1.9.0" and c.is_version_compatible, f"{scheme}: version {c.nexus_version} compatible")
    user = f"py.{scheme}.user"
    res, err = c.userCreate(user, "pypass1")
    check(err is None and res == {"ok": True}, f"{scheme}: userCreate -> {res} {err}")
    res, err = c.userCreate(user, "pypass1")
    check(err is not None and err["code"] == -32005, f"{scheme}: duplicate userCreate -> {err}")
    res, err = c.userSetTags(user, "py", {"@user.list": True})
    check(err is None, f"{scheme}: userSetTags -> {err}")
    res, err = c.userSetPass(user, "pypass2")
    check(err is None, f"{scheme}: userSetPass -> {err}")
    err = c.ping(5)
    check(err is None, f"{scheme}: ping")
    c.close()

    u = pynexus.Client(url.replace("root:root", f"{user}:pypass2"))
    check(u.is_logged, f"{scheme}: new user logs in ({u.login_error})")
    res, err = u.execute("user.list", {"prefix": "py"})
    check(err is None and sorted(x["user"] for x in res)[-1].startswith("py."), f"{scheme}: user.list -> {err}")
    res, err = u.userDelete(user)
    check(err is not None and err["code"] == -32010, f"{scheme}: delete without permission -> {err}")
    u.close()

    bad = pynexus.Client(url.replace("root:root", "root:wrong"))
    check(not bad.is_logged and bad.login_error["code"] == -32010, f"{scheme}: wrong password -> {bad.login_error}")
    bad.close()
# Messaging with the client's own helpers: a task round trip between two clients,
# a pipe fed by a topic, and a lock.
import threading

for scheme, url in (("tcp", f"tcp://root:root@127.0.0.1:{tcp_port}"), ("ws", f"ws://root:root@127.0.0.1:{http_port}/")):
    caller = pynexus.Client(url)
    worker = pynexus.Client(url)
    answer = {}

    def call():
        answer["res"], answer["err"] = caller.taskPush(f"py.{scheme}.svc.add", {"a": 2, "b": 3}, timeout=10)

    t = threading.Thread(target=call)
    t.start()
    task, err = worker.taskPull(f"py.{scheme}.svc", timeout=10)
    check(err is None and task.method == "add" and task.params == {"a": 2, "b": 3}, f"{scheme}: taskPull -> {err}")
    check(task.user == "root" and task.tags.get("@admin") is True, f"{scheme}: task carries user and tags")
    res, err = task.sendResult({"sum": 5})
    check(err is None, f"{scheme}: sendResult -> {err}")
    t.join(10)
    check(answer.get("res") == {"sum": 5}, f"{scheme}: pusher got {answer}")

    t = threading.Thread(target=call)
    t.start()
    task, err = worker.taskPull(f"py.{scheme}.svc", timeout=10)
    res, err = task.sendError(-32602, "no such operand", {"operand": "c"})
    check(err is None, f"{scheme}: sendError -> {err}")
    t.join(10)
    check(answer.get("err", {}).get("code") == -32602, f"{scheme}: pusher got error {answer}")

    pipe, err = worker.pipeCreate(100)
    check(err is None, f"{scheme}: pipeCreate -> {err}")
    res, err = worker.topicSubscribe(pipe, f"py.{scheme}.news.*")
    check(err is None, f"{scheme}: topicSubscribe -> {err}")
    res, err = caller.topicPublish(f"py.{scheme}.news.today", {"headline": "hi"})
    check(err is None and res["sent"] == 1, f"{scheme}: topicPublish -> {res} {err}")
    data, err = pipe.read(10, 5)
    check(err is None and len(data.msgs) == 1 and data.msgs[0].msg == {"topic": f"py.{scheme}.news.today", "msg": {"headline": "hi"}}, f"{scheme}: pipe.read -> {err}")
    check(data.msgs[0].count == 1 and data.waiting == 0 and data.drops == 0, f"{scheme}: pipe counters")

    ok, err = caller.lock(f"py.{scheme}.lock")
    check(ok is True, f"{scheme}: lock -> {err}")
    ok, err = worker.lock(f"py.{scheme}.lock")
    check(ok is None and err["code"] == -32006, f"{scheme}: second lock -> {err}")
    ok, err = caller.unlock(f"py.{scheme}.lock")
    check(ok is True, f"{scheme}: unlock -> {err}")
    caller.close()
    worker.close()

print("pynexus2 interop: all checks passed")
