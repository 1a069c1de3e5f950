#!/usr/bin/env python3
"""Converts rfc7208-tests.yml (the OpenSPF suite as pyspf 2.0.14 ships it)
into rfc7208-tests.json, which tests/tests/openspf.rs reads (the test
crate has no YAML parser). Run it after replacing the YAML: python3 to_json.py"""
import json

import yaml

out = []
for doc in yaml.safe_load_all(open("rfc7208-tests.yml")):
    zone = {}
    for name, recs in (doc.get("zonedata") or {}).items():
        entries = []
        for r in recs:
            if isinstance(r, dict):
                for t, v in r.items():
                    if isinstance(v, str) and t in ("TXT", "SPF"):
                        v = [v]
                    entries.append([t, v])
            else:
                entries.append([str(r), None])  # a bare TIMEOUT
        zone[name] = entries
    tests = []
    for name, t in doc["tests"].items():
        result = t["result"]
        extra = {"explanation": t["explanation"]} if "explanation" in t else {}
        tests.append({
            **extra,
            "name": name,
            "spec": str(t.get("spec", "")),
            "helo": t.get("helo", ""),
            "host": t["host"],
            "mailfrom": t.get("mailfrom", ""),
            "result": [result] if isinstance(result, str) else result,
        })
    out.append({"description": doc["description"], "zonedata": zone, "tests": tests})
json.dump(out, open("rfc7208-tests.json", "w"), indent=1, sort_keys=True)
