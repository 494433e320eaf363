"""Cloud Storage JSON API v1: buckets (with IAM), objects, uploads and media downloads.

Mounted at the root, as ``STORAGE_EMULATOR_HOST`` and ``client_options={"api_endpoint": base}`` expect:
``/storage/v1/b...`` (metadata), ``/upload/storage/v1/b/{bucket}/o`` (``uploadType=media|multipart|resumable``)
and ``/download/storage/v1/b/{bucket}/o/{object}?alt=media``.

Behaviour kept from GCS:

- Bucket names are global: a second insert answers 409, with a different message depending on whether the
  name is already yours. Names are validated (400 ``Invalid bucket name``); ``location`` is upper-cased;
  the whole body (labels, iamConfiguration, versioning, lifecycle, softDeletePolicy...) is kept.
- Every write bumps ``metageneration``; ``ifMetagenerationMatch``/``ifGenerationMatch`` (0 = must not exist)
  and their ``NotMatch`` twins are enforced with 412 ``conditionNotMet``, except that a failed ``NotMatch``
  on a read (GET metadata or media) is 304 Not Modified, as GCS answers it.
- Uploads are verified: a client-sent ``crc32c``/``md5Hash`` (metadata) or ``X-Goog-Hash`` that does not
  match the bytes is a 400. Downloads carry ``X-Goog-Hash``, ``X-Goog-Generation`` and friends, which the
  client checks; ``Range`` gives 206 (or 416).
- Resumable uploads: the POST answers with a ``Location`` session URL; chunks are PUT with
  ``Content-Range``; intermediate answers are 308 with ``Range`` (absent while nothing is stored); the last
  answers 200 with the object. Preconditions are checked when the session starts and again at the end.
- Bucket IAM policies carry etags (stale -> 412); with public access prevention enforced, ``allUsers`` and
  ``allAuthenticatedUsers`` are refused with 412.

Object bytes live in files, one per generation, under ``data_dir/gcs/<bucket>/``; bodies are streamed to
and from disk so large objects never sit in memory. Metadata lives in the store.

- Soft delete: with a bucket retention, a deleted or overwritten generation stays listable (``softDeleted=true``)
  and restorable until its ``hardDeleteTime`` (softdelete.py says what GCS does and what is left out).

The package: ``api.py`` (the module and what its routes share), ``buckets.py``, ``objects.py`` (metadata and
downloads), ``softdelete.py`` (soft-deleted generations and restore), ``uploads.py`` (media, multipart and resumable
uploads), ``common.py`` (errors, preconditions, hashing).
"""

from .api import StorageApi
from .common import BUCKET_KIND, OBJECT_KIND, UPLOAD_KIND, Preconditions

__all__ = ["BUCKET_KIND", "OBJECT_KIND", "UPLOAD_KIND", "Preconditions", "StorageApi"]
