"""Pulls an OCI artifact with oras-py (PyPI's `oras`, which tests/run
installs into the tools' virtualenv), for tests/bucket_clients.rs:

    oras_pull.py REGISTRY REFERENCE OUTDIR

over plain HTTP, with the Basic credentials in ORAS_USER and ORAS_PASS
(oras-py's basic auth backend reads them). Prints each file it wrote.
"""

import sys

try:
    import oras.client
except ImportError:
    sys.exit("oras is not installed in this virtualenv: run tests/run, which installs it")

registry, reference, outdir = sys.argv[1:4]
client = oras.client.OrasClient(hostname=registry, insecure=True, auth_backend="basic")
for path in client.pull(target=reference, outdir=outdir):
    print(path)
