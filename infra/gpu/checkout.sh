#!/usr/bin/env bash
# The init container of a kubernetes flow-run pod (infra/gpu/pools/gpu-kubernetes.json): puts the
# checkout the flow run works in at $D1_RUN_CHECKOUT (an emptyDir the flow-run container mounts at
# /workspace/d1-pipeline) and points DVC at the shared remote. No credentials here: the flow-run
# container gets them from a Kubernetes secret.
#
#   D1_GIT_REPO          URL to clone; empty: copy the checkout baked into the image ($D1_IMAGE_CHECKOUT)
#   D1_GIT_REVISION      commit, tag or branch to check out; empty: the clone's default branch (or the image's commit)
#   D1_DVC_REMOTE_URL    e.g. s3://bucket/d1: the checkout's default DVC remote (in .dvc/config.local);
#                        empty: the repository's own default remote
#   D1_DVC_ENDPOINT_URL  its S3 endpoint (MinIO, SeaweedFS, R2, ...); empty: AWS
set -euo pipefail
src=${D1_IMAGE_CHECKOUT:-/workspace/d1-pipeline}
dest=${D1_RUN_CHECKOUT:-/checkout}
export GIT_TERMINAL_PROMPT=0 DVC_NO_ANALYTICS=1

if [ -n "${D1_GIT_REPO:-}" ]; then
    git clone --quiet "$D1_GIT_REPO" "$dest"
else
    cp -a "$src/." "$dest/"
fi
cd "$dest"
if [ -n "${D1_GIT_REVISION:-}" ]; then
    # fetch it first (a branch, tag or commit newer than the image); a commit the checkout has will do
    if git fetch --quiet origin "$D1_GIT_REVISION" 2>/dev/null; then
        git -c advice.detachedHead=false checkout --quiet --detach FETCH_HEAD
    else
        git -c advice.detachedHead=false checkout --quiet --detach "$D1_GIT_REVISION"
    fi
fi
if [ -n "${D1_DVC_REMOTE_URL:-}" ]; then
    dvc remote add --local --force --default d1 "$D1_DVC_REMOTE_URL"
    if [ -n "${D1_DVC_ENDPOINT_URL:-}" ]; then
        dvc remote modify --local d1 endpointurl "$D1_DVC_ENDPOINT_URL"
    fi
fi
echo "d1 checkout at $(git rev-parse HEAD) ($(git log -1 --format=%s | cut -c1-72)); DVC remote: $(dvc remote default)"
