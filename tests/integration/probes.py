"""What a guest runs to try TCP connections: `python3 -c CONNECT_PROBE TARGETS_JSON TIMEOUT_S`
prints one JSON object, "host:port" -> "open" or why not (an errno name such as ENETUNREACH, or
the exception's type, e.g. TimeoutError)."""

CONNECT_PROBE = """
import errno, json, socket, sys
out = {}
for host, port in json.loads(sys.argv[1]):
    s = socket.socket()
    s.settimeout(float(sys.argv[2]))
    try:
        s.connect((host, port))
        out[f"{host}:{port}"] = "open"
    except OSError as err:
        out[f"{host}:{port}"] = errno.errorcode.get(err.errno or -1, type(err).__name__)
    finally:
        s.close()
print(json.dumps(out))
"""
