"""A tiny stand-in for the Hugging Face Hub on 127.0.0.1, for ``mrlite push`` tests (no real Hub, no network).

Implements only what ``HfApi.create_repo`` + ``HfApi.create_commit`` call, as read in huggingface_hub's source:
``POST /api/repos/create``, ``POST /api/validate-yaml``, ``POST /api/{type}s/{repo}/preupload/{rev}`` (every
file "regular", with the oid of the stored copy so unchanged files are skipped), ``POST
/api/{type}s/{repo}/commit/{rev}`` (NDJSON, base64 file contents) and ``GET /api/{type}s/{repo}/revision/{rev}``
(asked after a commit that changed nothing). Every request is recorded; ``fail`` makes the next requests to a
route answer 500 (a network error mid-upload).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubStub:
    def __init__(self) -> None:
        self.requests: list[dict] = []  # {"method", "path", "auth", "body" (parsed when JSON/NDJSON)}
        self.repos: dict[str, dict] = {}  # "type:owner/name" -> {"private": bool, "files": {path: bytes}, "commits": n}
        self.fail: dict[str, int] = {}  # route name ("create", "preupload", "commit") -> failures left
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def routes(self) -> list[str]:
        return [f"{r['method']} {r['route']}" for r in self.requests]

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, obj) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def do_GET(self):
                m = re.fullmatch(r"/api/(model|dataset)s/([^/]+/[^/]+)/revision/([^/?]+).*", self.path)
                stub.requests.append({"method": "GET", "path": self.path, "route": "revision" if m else "?",
                                      "auth": self.headers.get("authorization")})
                key = m and f"{m.group(1)}:{m.group(2)}"
                if not m or key not in stub.repos:
                    return self._send(404, {"error": "not found"})
                repo = stub.repos[key]
                self._send(200, {"id": m.group(2), "sha": f"{repo['commits']:040x}", "private": repo["private"],
                                 "siblings": [{"rfilename": f} for f in sorted(repo["files"])]})

            def do_POST(self):
                raw = self._body()
                path = self.path.split("?")[0]
                rec = {"method": "POST", "path": self.path, "auth": self.headers.get("authorization")}
                stub.requests.append(rec)
                if path == "/api/repos/create":
                    rec["route"] = "create"
                    rec["body"] = body = json.loads(raw)
                    if self._failing("create"):
                        return
                    repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
                    key = f"{body.get('type') or 'model'}:{repo_id}"
                    prefix = "" if (body.get("type") or "model") == "model" else "datasets/"
                    if key in stub.repos:  # the Hub answers 409 with the repo's url
                        return self._send(409, {"error": "You already created this repo",
                                                "url": f"{stub.url}/{prefix}{repo_id}"})
                    stub.repos[key] = {"private": body.get("visibility") == "private", "files": {}, "commits": 0}
                    return self._send(200, {"url": f"{stub.url}/{prefix}{repo_id}", "name": repo_id})
                if path == "/api/validate-yaml":
                    rec["route"] = "validate-yaml"
                    rec["body"] = json.loads(raw)
                    return self._send(200, {})
                m = re.fullmatch(r"/api/(model|dataset)s/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path)
                if not m:
                    rec["route"] = "?"
                    return self._send(404, {"error": f"stub has no route {path}"})
                kind, repo_id, what = m.group(1), m.group(2), m.group(3)
                rec["route"] = what
                repo = stub.repos.get(f"{kind}:{repo_id}")
                if repo is None:
                    return self._send(404, {"error": "Repository not found"})
                if self._failing(what):
                    return
                if what == "preupload":
                    rec["body"] = body = json.loads(raw)
                    files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                              "oid": git_oid(repo["files"][f["path"]]) if f["path"] in repo["files"] else None}
                             for f in body["files"]]
                    return self._send(200, {"files": files, "commitOid": f"{repo['commits']:040x}"})
                lines = [json.loads(x) for x in raw.splitlines() if x.strip()]
                rec["body"] = [{"key": x["key"], "path": x["value"].get("path")} for x in lines]
                for x in lines:
                    if x["key"] == "file":
                        repo["files"][x["value"]["path"]] = base64.b64decode(x["value"]["content"])
                repo["commits"] += 1
                prefix = "" if kind == "model" else "datasets/"
                return self._send(200, {"commitUrl": f"{stub.url}/{prefix}{repo_id}/commit/{repo['commits']:040x}",
                                        "commitOid": f"{repo['commits']:040x}", "pullRequestUrl": None})

            def _failing(self, route: str) -> bool:
                if stub.fail.get(route, 0) > 0:
                    stub.fail[route] -= 1
                    self._send(500, {"error": "stub: simulated server error"})
                    return True
                return False

        return Handler
