"""Credentials for the test scripts, as an application gives them to the official client.

V5_ACCESS_KEY and V5_SECRET_KEY in the environment: the client signs every request with them
(`Credentials(ak, sk)`: the `authorization` and `x-mq-date-time` headers); unset: no
credentials, which a broker with acl_enabled refuses.
"""

import os

from rocketmq import Credentials
from rocketmq.v5.exception import ForbiddenException, UnauthorizedException


def credentials():
    access_key = os.environ.get("V5_ACCESS_KEY", "")
    secret_key = os.environ.get("V5_SECRET_KEY", "")
    return Credentials(access_key, secret_key) if access_key else Credentials()


def refused(err):
    """Whether `err` is the broker refusing who we are (40100) or what we may do (40300): no
    retry helps, so a script stops instead of waiting out its silence."""
    return isinstance(err, (UnauthorizedException, ForbiddenException))
