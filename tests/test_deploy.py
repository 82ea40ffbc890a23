"""deploy/: the systemd units pass `systemd-analyze verify`, the nginx site passes `nginx -t`
and, run for real with a throwaway certificate, terminates TLS in front of the Procfile's
gunicorn and Datasette."""

import json
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from testing.processes import ROOT, Procfile, free_port, receiver_environment

DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").iterdir())
SITE = DEPLOY / "nginx" / "dispatch-receiver.conf"
INSTALLED_AT = "/opt/dispatch-receiver"


def installed_here(tmp_path):
    """The units with this checkout standing in for /opt/dispatch-receiver."""
    folder = tmp_path / "units"
    folder.mkdir()
    for unit in UNITS:
        (folder / unit.name).write_text(unit.read_text().replace(INSTALLED_AT, str(ROOT)))
    return sorted(folder.iterdir())


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (Debian package systemd)")
def test_systemd_units_verify(tmp_path):
    assert {u.name for u in UNITS} == {
        "dispatch-receiver-web.service", "dispatch-receiver-datasette.service",
        "dispatch-receiver-backup.service", "dispatch-receiver-backup.timer"}
    units = installed_here(tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, units)],
                            capture_output=True, text=True, timeout=60)
    # Unknown keys are only warnings (exit 0): any output at all is a failure here.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_every_unit_command_exists_and_receiver_knows_it(tmp_path):
    """systemd-analyze checks only a unit's first ExecStart; check every one."""
    commands = []
    for unit in installed_here(tmp_path):
        for line in unit.read_text().splitlines():
            match = re.match(r"Exec(Start|Reload)=(.*)", line)
            if match:
                commands.append(shlex.split(match[2].replace("$MAINPID", "1")))
    assert len(commands) >= 6
    for argv in commands:
        assert Path(argv[0]).is_file(), argv
        if argv[0].endswith("/receiver"):
            result = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, (argv, result.stderr)


def site_for_test(tmp_path, https_port, http_port, web_port, datasette_port):
    """The site with a throwaway self-signed certificate, free ports and a temp prefix."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-addext", "basicConstraints=critical,CA:TRUE"],
                   check=True, capture_output=True, timeout=60)
    site = SITE.read_text()
    replacements = {
        "/etc/letsencrypt/live/receiver.example.com/fullchain.pem": str(cert),
        "/etc/letsencrypt/live/receiver.example.com/privkey.pem": str(key),
        "root /var/www/html;": f"root {tmp_path};",
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "server 127.0.0.1:8000;": f"server 127.0.0.1:{web_port};",
        "server 127.0.0.1:8001;": f"server 127.0.0.1:{datasette_port};",
    }
    for old, new in replacements.items():
        assert old in site, old
        site = site.replace(old, new)
    site = "\n".join(line for line in site.splitlines() if "listen [::]" not in line)
    (tmp_path / "site.conf").write_text(site)
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
                    f"http {{\n    access_log {tmp_path}/access.log;\n    include {tmp_path}/site.conf;\n}}\n")
    return conf, cert


def nginx(conf, *args):
    return ["nginx", "-p", str(conf.parent), "-c", str(conf), "-e", str(conf.parent / "error.log"), *args]


needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None,
                                 reason="nginx is not installed (make system-deps installs it)")


@needs_nginx
def test_nginx_site_passes_nginx_t(tmp_path):
    conf, _ = site_for_test(tmp_path, 8443, 8080, 8000, 8001)
    result = subprocess.run(nginx(conf, "-t"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@needs_nginx
def test_nginx_terminates_tls_in_front_of_both(tmp_path):
    web_port, datasette_port, https_port, http_port = (free_port() for _ in range(4))
    env = receiver_environment(tmp_path / "events.db", web_port, WEB_CONCURRENCY=2,
                               DATASETTE_PORT=datasette_port, DATASETTE_HOST="127.0.0.1",
                               RECEIVER_PROXY_HOPS=1)
    procs = Procfile(env, log_dir=tmp_path).start()
    conf, cert = site_for_test(tmp_path, https_port, http_port, web_port, datasette_port)
    proxy = subprocess.Popen(nginx(conf, "-g", "daemon off;"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    base = f"https://127.0.0.1:{https_port}"
    try:
        procs.wait_until({"web": f"http://127.0.0.1:{web_port}/healthz",
                          "datasette": f"http://127.0.0.1:{datasette_port}/-/versions.json"}, timeout=60)
        with requests.Session() as http:
            http.trust_env = False  # REQUESTS_CA_BUNDLE would replace the throwaway CA
            http.verify = str(cert)
            http.headers["Host"] = "localhost"
            deadline = time.monotonic() + 10
            while True:
                try:
                    health = http.get(f"{base}/healthz", timeout=5)
                    break
                except requests.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            assert health.status_code == 200
            body = {"message_uuid": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
                    "to": {"type": "sms", "number": "447700900000"},
                    "from": {"type": "sms", "number": "447700900001"},
                    "timestamp": "2020-01-01T14:00:00.000Z", "status": "delivered",
                    "usage": {"currency": "EUR", "price": "0.0333"}}
            stored = http.post(f"{base}/webhooks/vonage", data=json.dumps(body),
                               headers={"Content-Type": "application/json",
                                        "X-Forwarded-For": "203.0.113.9"}, timeout=10)
            assert stored.status_code == 200, stored.text
            assert stored.json()["status"] == "stored"
            # RECEIVER_PROXY_HOPS=1: the address nginx saw, not a forged one, is recorded.
            page = http.get(f"{base}/-/versions.json", timeout=10)
            assert page.status_code == 200 and "datasette" in page.json()
            rows = http.get(f"{base}/events/callbacks.json?_shape=array", timeout=10).json()
            assert [(r["id"], r["remote_addr"]) for r in rows] == [(1, "127.0.0.1")]
            assert http.get(f"{base}/metrics", timeout=10).status_code == 404
            plain = http.get(f"http://127.0.0.1:{http_port}/webhooks/vonage", allow_redirects=False,
                             timeout=10)
            assert plain.status_code == 301
            assert plain.headers["Location"] == "https://localhost/webhooks/vonage"
    finally:
        proxy.send_signal(signal.SIGQUIT)
        try:
            proxy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait(timeout=10)
        problems = procs.stop(grace=10)
    assert problems == []
