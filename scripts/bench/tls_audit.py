#!/usr/bin/env python3
"""Compares two testssl.sh runs for scripts/tls-audit.sh (standard library only).

  tls_audit.py report LB.json NGINX.json OUT.md [META...]

Reads testssl.sh's pretty JSON (--jsonfile-pretty) of lb and of nginx, prints
a markdown table of the checks side by side (each cell: severity and
testssl.sh's finding, shortened) and writes it to OUT.md with the META lines
above it. Then applies the rule: lb shows no finding nginx does not. A finding
is a severity of LOW or above, WARN (testssl.sh could not test something) or
a finding text that says "NOT ok". lb fails a check when its finding ranks
above nginx's for the same check id (nginx OK or INFO, or no such id, ranks 0).
Exit status 1 names every such check, 0 when there is none.
"""
import json
import re
import sys

RANK = {"DEBUG": 0, "INFO": 0, "OK": 0, "LOW": 1, "WARN": 1, "MEDIUM": 2,
        "HIGH": 3, "CRITICAL": 4, "FATAL": 5}

# Sections of testssl.sh's JSON, in the order they appear in the table.
SECTIONS = [
    ("protocols", "Protocols and ALPN"),
    ("ciphers", "Cipher categories"),
    ("pfs", "Forward secrecy"),
    ("serverPreferences", "Server preferences"),
    ("serverDefaults", "Session resumption and certificate"),
    ("headerResponse", "HTTP headers"),
    ("vulnerabilities", "Vulnerabilities"),
]
# Rows left out of the table (still under the rule): identities of the
# certificate, what the backend says, and empty per-protocol placeholders.
SKIP = re.compile(r"^(cert|cert_(serialNumber|serialNumberLen|fingerprintSHA1|fingerprintSHA256|"
                  r"notBefore|caIssuers|commonName_wo_SNI|certificatePolicies_EV|eTLS)|"
                  r"TLS_extensions|TLS_timestamp|HTTP_clock_skew|cipher_order_|"
                  r"X-.*|banner_.*|cookie_count|HPKP|PFS_ciphers|DNS_CAArecord|pre_.*)$")


def load(path):
    """{id: (section, severity, finding)} with the highest severity per id."""
    with open(path) as f:
        doc = json.load(f)
    scans = doc.get("scanResult") or []
    if not scans:
        sys.exit(f"{path}: no scanResult (did testssl.sh reach the server?)")
    out = {}
    for section, items in scans[0].items():
        if not isinstance(items, list):
            continue
        for item in items:
            key = item.get("id", "")
            sev = item.get("severity", "INFO")
            fin = " ".join(str(item.get("finding", "")).split())
            old = out.get(key)
            if old is None or rank(sev, fin) > rank(old[1], old[2]):
                out[key] = (section, sev, fin)
    return doc, out


def rank(sev, finding):
    r = RANK.get(sev, 0)
    if "NOT ok" in finding:
        r = max(r, 1)
    return r


def cell(entry, width=48):
    if entry is None:
        return "—"
    _, sev, fin = entry
    fin = fin.replace("|", "/")
    if len(fin) > width:
        fin = fin[: width - 1] + "…"
    mark = "**" if rank(sev, fin) > 0 else ""
    return f"{mark}{sev}{mark} {fin}".strip()


def summary_rows(lb, ng):
    """One row for the cipher list and one for the simulated clients."""
    rows = []
    for label, prefix in (("ciphers offered (each tested)", "cipher_x"),
                          ("simulated clients that connect", "clientsimulation-")):
        cells = []
        for d in (lb, ng):
            ids = [k for k in d if k.startswith(prefix)]
            if prefix == "cipher_x":
                cells.append(f"INFO {len(ids)}")
            else:
                ok = [k for k in ids if "No connection" not in d[k][2]]
                cells.append(f"INFO {len(ok)} of {len(ids)}")
        rows.append((label, cells[0], cells[1], ""))
    return rows


def report(lb_path, ng_path, md_path, meta):
    lb_doc, lb = load(lb_path)
    ng_doc, ng = load(ng_path)
    worse = []
    for key, entry in lb.items():
        r_lb = rank(entry[1], entry[2])
        r_ng = rank(*ng[key][1:]) if key in ng else 0
        if r_lb > 0 and r_lb > r_ng:
            worse.append(key)

    lines = [*meta, ""]
    lines.append("| check (testssl.sh id) | lb | nginx | |")
    lines.append("|---|---|---|---|")
    for section, title in SECTIONS:
        keys = []
        for d in (lb, ng):
            for k, e in d.items():
                if e[0] == section and k not in keys and not SKIP.match(k):
                    keys.append(k)
        for k in worse:
            if lb[k][0] == section and k not in keys:
                keys.append(k)
        if not keys:
            continue
        lines.append(f"| *{title}* | | | |")
        for k in keys:
            flag = "lb worse" if k in worse else ""
            lines.append(f"| {k} | {cell(lb.get(k))} | {cell(ng.get(k))} | {flag} |")
    lines.append("| *Ciphers and clients* | | | |")
    for label, a, b, flag in summary_rows(lb, ng):
        lines.append(f"| {label} | {a} | {b} | {flag} |")
    # Anything lb is worse at outside the sections above.
    shown = {s for s, _ in SECTIONS}
    for k in worse:
        if lb[k][0] not in shown:
            lines.append(f"| {k} | {cell(lb.get(k))} | {cell(ng.get(k))} | lb worse |")
    lines.append("")
    lines.append(f"testssl.sh {lb_doc.get('version', '?').split()[0]} with {lb_doc.get('openssl', '?')}; "
                 f"scan time lb {lb_doc.get('scanTime', '?')} s, nginx {ng_doc.get('scanTime', '?')} s. "
                 "Bold: a finding (LOW or above, WARN, NOT ok).")
    lines.append("")
    if worse:
        lines.append("**Rule failed**: lb shows findings that nginx's defaults don't:")
        for k in worse:
            lines.append(f"- `{k}`: lb {lb[k][1]} \"{lb[k][2]}\"; nginx "
                         + (f"{ng[k][1]} \"{ng[k][2]}\"" if k in ng else "has no such finding"))
    else:
        lines.append("**Rule met**: lb shows no finding that nginx's defaults don't.")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    with open(md_path, "w") as f:
        f.write(text)
    return 1 if worse else 0


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "report":
        sys.exit(report(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]))
    sys.exit(__doc__)


if __name__ == "__main__":
    main()
