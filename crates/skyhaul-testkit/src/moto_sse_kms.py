"""moto's S3 server as a bucket behaves when it encrypts every object with SSE-KMS.

AWS gives such objects (and their parts) ETags that look like MD5s (32 hex digits, or
`…-N` after a multipart upload) but are not the MD5 of the content, and says so only by
`x-amz-server-side-encryption: aws:kms` on each object's answers. No local S3 server does
this, so this wrapper teaches moto the two things: every object is stored as `aws:kms`
(moto then sends the header on GET, HEAD, PUT, UploadPart, UploadPartCopy, CopyObject and
CompleteMultipartUpload), and its ETag is a random 128-bit value fixed when the object is
written. Everything else is moto's own code, conditional requests and listings included.

Run as `python moto_sse_kms.py [moto_server arguments]`.
"""

import os
import sys

from moto.s3 import models

_plain_init = models.FakeKey.__init__


def _init(self, *args, **kwargs):
    _plain_init(self, *args, **kwargs)
    self.encryption = "aws:kms"
    self.kms_key_id = "arn:aws:kms:us-east-1:123456789012:key/skyhaul-test"
    # Fixed here, when the object is made: moto's server answers on several threads. An
    # object completed from parts is made with its ETag (`…-N`), whose part count stays.
    count = (self._etag or "").strip('"').partition("-")[2]
    self._kms_etag = os.urandom(16).hex() + (f"-{count}" if count else "")


def _etag(self):
    return f'"{self._kms_etag}"'


models.FakeKey.__init__ = _init
models.FakeKey.etag = property(_etag)

from moto.server import main  # noqa: E402  (after the patch, which must come first)

sys.exit(main())
