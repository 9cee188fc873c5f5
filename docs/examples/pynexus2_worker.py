"""pynexus2 (pip install pynexus2): a caller pushes a task, a worker pulls and answers it.
Usage: python pynexus2_worker.py 127.0.0.1 1717 root root
"""
import sys
import threading

import pynexus

def arg(i, default):
    return sys.argv[i] if len(sys.argv) > i else default


host, port, user, password = arg(1, "127.0.0.1"), arg(2, "1717"), arg(3, "root"), arg(4, "root")
url = "tcp://%s:%s@%s:%s" % (user, password, host, port)


def worker():
    client = pynexus.Client(url)
    task, err = client.taskPull("demo.math", 10)
    assert err is None, err
    a, b = task.params["a"], task.params["b"]
    task.sendResult({"sum": a + b})
    client.close()


t = threading.Thread(target=worker)
t.start()
caller = pynexus.Client(url)
result, err = caller.taskPush("demo.math.add", {"a": 2, "b": 3}, timeout=10)
print("result:", result, "error:", err)
assert err is None and result == {"sum": 5}, (result, err)
t.join()
caller.close()
