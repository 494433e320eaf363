"""Artifact uploads streamed to Cloud Storage in bounded chunks, never spooled whole.

MLflow's artifact route (``mlflow/server/artifact_router.py``, ``upload_artifact``) hands the request body to the
artifact repository as a stream only when the repository is a ``StreamUploadMixin``; otherwise it first writes the
whole body to ``tempfile.TemporaryDirectory()`` and then calls ``log_artifact`` on that file. MLflow's
``GCSArtifactRepository`` is not a ``StreamUploadMixin``, and on Cloud Run ``/tmp`` is an in-memory file system
whose files count against the instance's memory ("the file system is in-memory; writing to it uses the
instance's memory", cloud.google.com/run/docs/container-contract#filesystem). Measured with
``benchmarks/memory.py`` on a 150 MB ``mlflow.log_artifact``: a 150 MB spool plus 150 MB of resident growth
(google-cloud-storage's default resumable chunk is 100 MiB, held in memory), so an upload cost twice its size and
a 1 GiB instance could not take a 400 MB model without being killed, with every request it was serving.

:class:`StreamingGcsArtifactRepository` is MLflow's GCS repository plus ``StreamUploadMixin``: the body goes
straight into a resumable upload session (``Blob.open("wb")``, google-cloud-storage's ``BlobWriter``), one
``CHUNK_BYTES`` chunk at a time, with a CRC32C of the whole object checked by the client against what GCS stored.
Memory per upload is bounded by the chunk, whatever the artifact's size. An upload that breaks off (the client
hangs up, an error) never finalizes its session, so no partial object appears: the same outcome as MLflow's
temp-file path, where nothing is uploaded before the body is complete.

The destination path and content type are computed as ``GCSArtifactRepository.log_artifact`` computes them
(``<root>/<artifact_path>/<basename>``, the type guessed from the name as ``Blob.upload_from_filename`` does).

mlflow_gcp_serve.py has every process that serves MLflow's app build it through :func:`create_app`, which registers the
repository for ``gs://`` and then builds the app ``mlflow server`` chose (``MLFLOW_GCP_APP``, e.g.
``mlflow.server.auth:create_app()``), so the workers of any process tree get it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import mimetypes
import os
import posixpath
import shutil
from collections.abc import AsyncIterable
from typing import Any, BinaryIO

from mlflow.store.artifact.artifact_repo import StreamUploadMixin
from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry
from mlflow.store.artifact.gcs_artifact_repo import GCSArtifactRepository

#: Bytes per resumable-upload request: a multiple of 256 KiB (the JSON API's rule for every chunk but the last).
#: 8 MiB keeps an upload's memory small and the request count of a 1 GB model at 128.
CHUNK_BYTES = 8 * 1024 * 1024


class StreamingGcsArtifactRepository(GCSArtifactRepository, StreamUploadMixin):
    """MLflow's GCS artifact repository that also takes an upload as a stream (see the module docstring)."""

    def _writer(self, artifact_file_name: str, artifact_path: str | None) -> Any:
        bucket, dest_path = self.parse_gcs_uri(self.artifact_uri)
        if artifact_path:
            dest_path = posixpath.join(dest_path, artifact_path)
        name = posixpath.basename(artifact_file_name.replace("\\", "/"))
        blob = self._get_bucket(bucket).blob(posixpath.join(dest_path, name))
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return blob.open(
            "wb",
            chunk_size=CHUNK_BYTES,
            ignore_flush=True,
            content_type=content_type,
            checksum="crc32c",
            timeout=self._GCS_DEFAULT_TIMEOUT,
        )

    def log_artifact_from_stream(
        self, stream: BinaryIO, artifact_file_name: str, artifact_path: str | None = None
    ) -> None:
        # BlobWriter as a context manager: close() (the last chunk; only then does the object exist) on success,
        # terminate() (see _cancel) on an exception. A plain close() from garbage collection would
        # finalize a half-read body as the object, so the writer is never left to it.
        with self._writer(artifact_file_name, artifact_path) as writer:
            shutil.copyfileobj(stream, writer, 1024 * 1024)

    async def log_artifact_from_async_stream(
        self, chunks: AsyncIterable[bytes], artifact_file_name: str, artifact_path: str | None = None
    ) -> None:
        writer = await asyncio.to_thread(self._writer, artifact_file_name, artifact_path)
        try:
            pending = bytearray()
            async for chunk in chunks:
                pending += chunk
                # Whole chunks to the writer: a write that fills one is an HTTP request (blocking: in a thread).
                if len(pending) >= CHUNK_BYTES:
                    await asyncio.to_thread(writer.write, pending)
                    pending = bytearray()
            if pending:
                await asyncio.to_thread(writer.write, pending)
            await asyncio.to_thread(writer.close)
        except BaseException:
            # The client hung up or GCS failed: abandon the session, so no partial object is ever created.
            await asyncio.shield(asyncio.to_thread(_cancel, writer))
            raise


def _cancel(writer: Any) -> None:
    """Abandon the upload: the session is never finalized, so no object appears (an abandoned session expires
    after a week: cloud.google.com/storage/docs/resumable-uploads). ``BlobWriter.terminate()`` is what closes the
    writer without finalizing; the DELETE it sends goes to the session's initiation URL, not to the session URI
    (google-cloud-storage 3.17 fileio.py), so it does not cancel the session itself, which is harmless."""
    with contextlib.suppress(Exception):  # the upload's own error is the one to report
        writer.terminate()


def register() -> None:
    """Make ``gs://`` artifact destinations use :class:`StreamingGcsArtifactRepository` in this process."""
    _artifact_repository_registry.register("gs", StreamingGcsArtifactRepository)


def create_app() -> Any:
    """The app named by ``MLFLOW_GCP_APP`` (``module:attr`` or ``module:factory()``), with :func:`register` done and
    ``GET /mlflow-gcp/schema`` (mlflow_gcp_schema.py, next to this file) added to MLflow's Flask app."""
    import mlflow.server
    import mlflow_gcp_schema

    register()
    mlflow_gcp_schema.register(mlflow.server.app)
    spec = os.environ["MLFLOW_GCP_APP"]
    module, _, name = spec.partition(":")
    factory = name.endswith("()")
    app = getattr(importlib.import_module(module), name.removesuffix("()"))
    return app() if factory else app
