# One image for the supervisor, every role (mmu, uvm, pdaemon, net) and the test clients.
#
#   docker compose build            official python image, dependencies from PyPI
#
# Offline (no registry, no package index in the build), as .ci/compose-smoke.sh does it:
#   --build-arg BASE=local/python:3.11-bookworm   a base with python3 + pip built without a
#                                                 registry (shared/tools/docker/mkbase.sh)
#   docker/wheels/                                filled on the host with the dependencies'
#                                                 and setuptools' wheels (fetch-wheels.sh)
#   --build-arg PIP_ARGS=--no-index               pip looks at docker/wheels/ only
# docker/wheels/ is always searched (--find-links); in a fresh clone it is empty.
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG PIP_ARGS=
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The RAM segment is created 0600 by the supervisor: every service runs as this one user.
# /run/uvm-machine is where the `kernel` volume is mounted (kernel sockets, machine key): a new
# volume takes this directory's owner and mode 0700.
RUN useradd --uid 10001 --user-group --shell /usr/sbin/nologin --home-dir /var/lib/uvm-machine \
        --no-create-home uvm \
 && install -d -o uvm -g uvm /var/lib/uvm-machine \
 && install -d -o uvm -g uvm -m 0700 /run/uvm-machine

# Runtime dependencies (read from pyproject.toml) in a layer of their own: a code change keeps it.
COPY docker/wheels/ /tmp/wheels/
COPY pyproject.toml /tmp/pyproject.toml
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/tmp/pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
 && pip install --find-links /tmp/wheels $PIP_ARGS -r /tmp/requirements.txt

# The project itself, not editable.
# README* (the package's long description): a glob, so that a tree without README.md builds too.
COPY pyproject.toml README* /src/
COPY machine /src/machine
COPY clients /src/clients
RUN pip install --find-links /tmp/wheels $PIP_ARGS /src \
 && rm -rf /src /tmp/wheels /tmp/pyproject.toml /tmp/requirements.txt \
 && uvm-machine --help >/dev/null

USER uvm
WORKDIR /var/lib/uvm-machine
CMD ["uvm-machine", "--help"]
