"""A real headless browser for the console's tests: Debian's chromium driven by Playwright.

Playwright's own browser download (`playwright install`) comes from a CDN that CI cannot reach, so
the tests launch the distribution's chromium through `executable_path`. Where none is installed,
`find_chromium(install=True)` installs it with apt-get when running as root (CI is root on Debian)
and says so; otherwise the browser tests are skipped with the command that installs it.
`python tests/browser.py` does the same check-and-install on its own (`make chromium`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = "sudo apt-get install -y chromium   (Debian/Ubuntu; or set MEDAID_CHROMIUM=/path/to/chromium)"


def say(text: str) -> None:
    """Shown even under pytest's output capture: an install that takes a minute should not be silent."""
    print(f"[console browser tests] {text}", file=sys.__stderr__, flush=True)


def _found() -> str:
    explicit = os.environ.get("MEDAID_CHROMIUM", "")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else ""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return ""


def _apt_install() -> bool:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in (["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                    ["apt-get", "update"],
                    ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        say("running: " + " ".join(attempt))
        done = subprocess.run(attempt, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              check=False, timeout=900)
        if done.returncode == 0 and attempt[1] == "install":
            return True
        if done.returncode != 0:
            say(f"{attempt[0]} {attempt[1]} failed: {done.stderr.strip()[-300:]}")
    return False


def find_chromium(install: bool = True) -> tuple[str, str]:
    """(path, "") when a chromium is there (installed now if need be), else ("", why not)."""
    path = _found()
    if path:
        return path, ""
    explicit = os.environ.get("MEDAID_CHROMIUM", "")
    if explicit:
        return "", f"MEDAID_CHROMIUM={explicit} is not an executable"
    if not install:
        return "", f"no chromium found; install it: {INSTALL_HINT}"
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if is_root and shutil.which("apt-get"):
        # Test workers running side by side (pytest -n) install once: the others wait for the first.
        with open(os.path.join(os.environ.get("TMPDIR", "/tmp"), "medaid-chromium-install.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = _found()
            if path:
                return path, ""
            say("no chromium found: installing Debian's chromium package for the console's browser tests")
            if _apt_install():
                path = _found()
                if path:
                    say(f"installed {path}")
                    return path, ""
        return "", f"apt-get could not install chromium; install it by hand: {INSTALL_HINT}"
    return "", f"no chromium found and not root (cannot apt-get install); install it: {INSTALL_HINT}"


if __name__ == "__main__":
    found, why = find_chromium(install=True)
    print(found or why)
    sys.exit(0 if found else 1)
