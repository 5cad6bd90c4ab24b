"""Who may log in to the controller."""

from __future__ import annotations

from twisted.cred import credentials
from twisted.cred import error as cred_error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer
from zope.interface import implementer


@implementer(ICredentialsChecker)
class SecretChecker:
    # PB logins are challenge/response: the secret never crosses the wire.
    credentialInterfaces = (credentials.IUsernameHashedPassword,)

    def __init__(self, secret: bytes) -> None:
        self.secret = secret

    def requestAvatarId(self, creds: credentials.IUsernameHashedPassword) -> defer.Deferred[bytes]:
        if creds.checkPassword(self.secret):
            return defer.succeed(creds.username)
        return defer.fail(cred_error.UnauthorizedLogin("wrong control secret"))
