"""twisted.cred wiring: a checker backed by the user directory, and the realm that
hands protocols the logged-in Account."""

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from zope.interface import Interface, implementer


class IAccountAvatar(Interface):
    """The avatar interface protocols ask for: the avatar is a jdmail.interfaces.Account."""


class DisabledAccount(UnauthorizedLogin):
    """Right password, but the account is switched off."""


@implementer(ICredentialsChecker)
class DirectoryChecker:
    """Checks username + password against an IUserDirectory.

    A backend failure (DirectoryUnavailable) is passed through so the protocol can
    answer with a temporary failure instead of "wrong password".
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, directory):
        self._directory = directory

    def requestAvatarId(self, credentials):
        return Deferred.fromCoroutine(self._check(credentials))

    async def _check(self, credentials):
        username = credentials.username
        password = credentials.password
        if isinstance(username, bytes):
            username = username.decode("utf-8", "replace")
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        account = await self._directory.authenticate(username.strip(), password)
        if account is None:
            raise UnauthorizedLogin("wrong user name or password")
        if not account.enabled:
            raise DisabledAccount("account disabled")
        return account.name


@implementer(IRealm)
class MailRealm:
    """Turns an authenticated name into its Account."""

    def __init__(self, directory):
        self._directory = directory

    def requestAvatar(self, avatarId, mind, *interfaces):
        if IAccountAvatar not in interfaces:
            raise NotImplementedError("jdmail's realm only provides IAccountAvatar")
        return Deferred.fromCoroutine(self._avatar(avatarId))

    async def _avatar(self, name):
        if isinstance(name, bytes):
            name = name.decode("utf-8")
        account = await self._directory.account(name)
        if account is None:
            raise UnauthorizedLogin("account vanished")
        return IAccountAvatar, account, _no_logout


def _no_logout():
    """The avatar's logout: nothing to do (one function for all sessions, not one each)."""


def make_portal(directory):
    """A Portal whose only checker is the directory."""
    return Portal(MailRealm(directory), [DirectoryChecker(directory)])
