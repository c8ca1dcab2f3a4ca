#!/usr/bin/env python3
"""Writes an OCI image archive of one static binary, for `ctr images import` (no registry here).

    oci-archive.py OUT.tar IMAGE_NAME BINARY PATH_IN_IMAGE [GOARCH]

The image holds BINARY at PATH_IN_IMAGE (its entrypoint) and nothing else; its index names it
IMAGE_NAME (annotation io.containerd.image.name, which `ctr images import` takes as the name).
The archive is reproducible: the same binary gives the same digests.
"""
import hashlib
import io
import json
import sys
import tarfile


def blob(data):
    return "sha256:" + hashlib.sha256(data).hexdigest(), len(data)


def tar_bytes(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def main():
    out, name, binary, path = sys.argv[1:5]
    arch = sys.argv[5] if len(sys.argv) > 5 else "amd64"
    with open(binary, "rb") as f:
        exe = f.read()
    layer = tar_bytes([(path.lstrip("/"), exe, 0o755)])
    layer_digest, layer_size = blob(layer)
    config = json.dumps({
        "architecture": arch,
        "os": "linux",
        "config": {"Entrypoint": [path], "Env": ["PATH=/"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }, sort_keys=True).encode()
    config_digest, config_size = blob(config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    }, sort_keys=True).encode()
    manifest_digest, manifest_size = blob(manifest)
    index = json.dumps({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]},
        }],
    }, sort_keys=True).encode()
    entries = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}', 0o644), ("index.json", index, 0o644)]
    for digest, data in ((layer_digest, layer), (config_digest, config), (manifest_digest, manifest)):
        entries.append(("blobs/sha256/" + digest.split(":", 1)[1], data, 0o644))
    with open(out, "wb") as f:
        f.write(tar_bytes(entries))


if __name__ == "__main__":
    main()
