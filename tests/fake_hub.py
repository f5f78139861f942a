"""A fake Hugging Face Hub for the push tests: the endpoints create_repo / upload_folder / Trainer.push_to_hub use,
served through huggingface_hub's client factory (the ``hub`` fixture in conftest.py installs it)."""

from __future__ import annotations

import base64
import json
import re

import httpx2
from huggingface_hub import ModelCard

TOKEN = "hf_fake_token_for_tests"



class FakeHub:
    """The Hub endpoints that create_repo / upload_folder / Trainer.push_to_hub use; ``fail_commits`` makes every
    commit answer 500."""

    def __init__(self):
        self.commits: list[dict] = []
        self.created: list[dict] = []
        self.unexpected: list[str] = []
        self.fail_commits = False

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        path, method = request.url.path, request.method
        host = f"{request.url.scheme}://{request.url.host}"
        if method == "POST" and path == "/api/repos/create":
            body = json.loads(request.read())
            repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
            self.created.append(body)
            return httpx2.Response(200, json={"url": f"{host}/{repo_id}", "name": repo_id})
        if method == "POST" and path == "/api/validate-yaml":
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if method == "POST" and (m := re.fullmatch(r"/api/models/(.+)/preupload/(.+)", path)):
            files = json.loads(request.read())["files"]
            return httpx2.Response(200, json={"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
            ]})
        if method == "POST" and (m := re.fullmatch(r"/api/models/(.+)/commit/(.+)", path)):
            if self.fail_commits:
                return httpx2.Response(500, json={"error": "Internal Error"})
            lines = [json.loads(line) for line in request.read().decode().splitlines() if line.strip()]
            files = {line["value"]["path"]: base64.b64decode(line["value"]["content"])
                     for line in lines if line["key"] == "file"}
            header = next(line["value"] for line in lines if line["key"] == "header")
            oid = f"{len(self.commits) + 1:040x}"
            self.commits.append({"repo_id": m.group(1), "revision": m.group(2), "summary": header.get("summary"),
                                 "files": files})
            return httpx2.Response(200, json={"success": True, "commitOid": oid,
                                              "commitUrl": f"{host}/{m.group(1)}/commit/{oid}"})
        if method in ("HEAD", "GET") and "/resolve/" in path:
            return httpx2.Response(404, headers={"X-Error-Code": "EntryNotFound"})
        self.unexpected.append(f"{method} {path}")
        return httpx2.Response(404, json={"error": f"the fake Hub does not serve {method} {path}"})

    def card(self, commit: dict) -> ModelCard:
        return ModelCard(commit["files"]["README.md"].decode("utf-8"))
