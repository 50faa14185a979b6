"""Who may talk to the server: unix permissions for ipc://, CURVE keys for tcp:// beyond loopback.

ipc: the socket file is made srw-rw---- and given `server.socket_group`; a directory the server
creates for it is made rwxr-x--- with the same group. Group members may connect but not
create or remove files there, so no client can unlink the socket and put its own in its
place (with rwxrwx--- any of them could impersonate the server to the others). An existing
directory is used as it is, but only if this user (or root) owns it and nobody else can
replace files in it: a /tmp/edgesched-<uid> planted by another user is refused.

tcp: a loopback host needs nothing more; any other bind (an address, `*`, an interface) is
refused unless CURVE keys are configured: the server's secret certificate and a directory of
client public certificates (zmq.auth's format, written by `edgesched keys`). A client whose
key is not in that directory fails the handshake and never reaches the server.

Model control (LOAD, UNLOAD) is for admins only (Admins): root, the server's own user and
`server.admin_group` on ipc (the kernel's SO_PEERCRED, through libzmq), `server.admin_keys`
with CURVE. Every connected client keeps the read-only view.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import zmq

from edgesched.endpoints import group_id, read_server_keys
from edgesched.errors import ConfigError, EdgeschedError, NotPermitted

SOCKET_MODE = 0o660
DIR_MODE = 0o750


def prepare_socket_dir(path: Path, gid: int | None) -> None:
    """Create the socket's directory (rwxr-x---, group `gid`), or check an existing one."""
    directory = path.parent
    try:
        directory.mkdir(parents=True, mode=DIR_MODE)
    except FileExistsError:
        info = directory.stat()
        if info.st_uid not in (os.getuid(), 0):
            raise EdgeschedError(f"socket directory {directory} belongs to uid {info.st_uid}, "
                                 "not to this user: refusing to serve from a directory another "
                                 "user controls") from None
        if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
            raise EdgeschedError(f"socket directory {directory} is writable by every user "
                                 "(and not sticky): anyone could replace the socket") from None
        return
    except OSError as e:
        raise EdgeschedError(f"cannot create socket directory {directory}: {e.strerror}") \
            from None
    os.chmod(directory, DIR_MODE)             # mkdir's mode is masked by the umask
    _give_group(directory, gid)


def secure_socket(path: Path, gid: int | None) -> None:
    """After bind: srw-rw---- and the configured group."""
    os.chmod(path, SOCKET_MODE)
    _give_group(path, gid)


def _give_group(path: Path, gid: int | None) -> None:
    if gid is None:
        return
    try:
        os.chown(path, -1, gid)
    except OSError as e:
        raise EdgeschedError(f"cannot give {path} to group {gid}: {e.strerror} (the server's "
                             "user must be a member of server.socket_group)") from None


class CurveKeys:
    """A server's CURVE certificate and the client public keys it accepts."""

    def __init__(self, secret_key: Path, authorized_keys: Path):
        self.secret_key, self.authorized_keys = secret_key, authorized_keys
        self.public, self.secret = read_server_keys(secret_key, authorized_keys)

    def start(self, ctx: zmq.Context, sock: zmq.Socket):
        """Make `sock` a CURVE server checked by a ZAP handler thread (returned: stop it)."""
        from zmq.auth.thread import ThreadAuthenticator
        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain="*", location=str(self.authorized_keys))
        sock.curve_secretkey, sock.curve_publickey = self.secret, self.public
        sock.curve_server = True
        return auth


class Admins:
    """Who may load and unload models (LOAD, UNLOAD); everyone else keeps the read-only view.

    Admitted is a peer with either identity: a CURVE client whose public key is in
    `server.admin_keys` (the ZAP handler's User-Id is that key, Z85), or an ipc peer whose
    uid is root or the server's own, or whose groups include `server.admin_group`. libzmq
    reads SO_PEERCRED when an ipc peer connects and gives it as the message property
    Peer-Address, "localhost:UID:GID:PID" on Linux (stream_engine_base.cpp; checked with two
    processes and two users): the kernel's word, not the client's. Groups are the uid's
    (getgrouplist) plus the peer's own gid. A tcp peer without CURVE carries no identity."""

    def __init__(self, server, endpoint: str, source: str = "config"):
        self.gid = None if server.admin_group is None else group_id(server.admin_group)
        self.keys = frozenset() if server.admin_keys is None else read_admin_keys(
            server.admin_keys, source)
        self.ipc, self.uid = endpoint.startswith("ipc://"), os.getuid()

    def check(self, frame, what: str) -> None:
        """NotPermitted unless the peer that sent `frame` (a received zmq.Frame) is an admin."""
        reason = self.refusal(_property(frame, "User-Id"),
                              _property(frame, "Peer-Address") if self.ipc else None)
        if reason is not None:
            raise NotPermitted(f"{what} is for admins only: {reason}; MODELS and STATS are "
                               "open to every client")

    def refusal(self, user_id: str | None, peer_address: str | None) -> str | None:
        """Why this peer is not an admin, or None (pure: the tests call it directly)."""
        if user_id and user_id in self.keys:
            return None
        creds = peer_credentials(peer_address)
        if creds is not None:
            uid, gid = creds
            if uid in (0, self.uid):
                return None
            if self.gid is not None and self.gid in _groups(uid, gid):
                return None
        who = [f"CURVE key {user_id[:10]}... is not in server.admin_keys"] if user_id else []
        if creds is not None:
            group = "" if self.gid is None else f" nor in group {self.gid} (server.admin_group)"
            who.append(f"uid {creds[0]} is not root, not the server's uid {self.uid}{group}")
        return "; ".join(who) or ("the connection carries no identity (connect over the ipc "
                                  "socket, or with a CURVE key in server.admin_keys)")


def peer_credentials(peer_address: str | None) -> tuple[int, int] | None:
    """(uid, gid) from an ipc peer's Peer-Address "HOST:UID:GID:PID", else None."""
    parts = (peer_address or "").rsplit(":", 3)
    if len(parts) != 4 or not (parts[1].isdigit() and parts[2].isdigit()):
        return None
    return int(parts[1]), int(parts[2])


def _groups(uid: int, gid: int) -> set[int]:
    import pwd
    try:
        return {gid, *os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)}
    except KeyError:                     # a uid with no passwd entry: its own gid only
        return {gid}


def _property(frame, name: str) -> str | None:
    try:
        return frame.get(name) or None
    except (zmq.ZMQError, AttributeError):  # EINVAL: not set on this connection; bytes: none
        return None


def read_admin_keys(directory: Path, source: str) -> frozenset[str]:
    """The Z85 public keys of the *.key certificates in `directory`; ConfigError if none."""
    import zmq.auth
    try:
        keys = zmq.auth.load_certificates(str(directory))
    except (OSError, ValueError) as e:
        raise ConfigError(source, "server.admin_keys", "a directory of CURVE public "
                          "certificates (*.key, edgesched keys)", str(e).splitlines()[0]) \
            from None
    if not keys:
        raise ConfigError(source, "server.admin_keys", "a directory holding at least one "
                          "*.key certificate", str(directory))
    return frozenset(k.decode("ascii") if isinstance(k, bytes) else k for k in keys)


def load_client_keys(server_key: str | os.PathLike,
                     client_key: str | os.PathLike) -> tuple[bytes, bytes, bytes]:
    """(server public, client public, client secret) from the server's public certificate and
    this client's secret one; ConfigError, one line, if either cannot be read."""
    import zmq.auth
    try:
        server_public, _ = zmq.auth.load_certificate(os.fspath(server_key))
        public, secret = zmq.auth.load_certificate(os.fspath(client_key))
    except (OSError, ValueError) as e:
        raise ConfigError("client", "server_key/client_key", "readable CURVE certificates "
                          "(edgesched keys)", str(e).splitlines()[0]) from None
    if secret is None:
        raise ConfigError("client", "client_key", "a .key_secret file", os.fspath(client_key))
    return server_public, public, secret


def apply_client_keys(sock: zmq.Socket, keys: tuple[bytes, bytes, bytes] | None) -> None:
    """Make `sock` a CURVE client (before it connects); None: a plain socket."""
    if keys is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = keys


def create_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """`name`.key (public, to hand out) and `name`.key_secret (keep private) in `directory`."""
    import zmq.auth
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def region_refusal(info: os.stat_result, uid: int, gid: int | None,
                   writable: bool = False) -> str | None:
    """Why the server must not read (writable: nor write) a shared-memory region file (fstat
    of /dev/shm/NAME), or None. The socket's rules, applied to the file: who may write the
    bytes while a request reads them is the file's owner and mode, whoever the connected peer
    is (its uid, which libzmq gives as Peer-Address, is checked for model control: Admins).
    Readable are regions of the server's own user, and, with `server.socket_group`, regions of
    that group that the group may read (a client of another user chgrps its region and sets
    g+r); writable ones (output targets) need u+w, or g+w in that group, too. A world-writable
    region is refused: any local user could change a request's bytes while it runs."""
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if info.st_mode & stat.S_IWOTH:
        return f"is world-writable (mode {stat.S_IMODE(info.st_mode):o})"
    read, write = (stat.S_IRUSR, stat.S_IWUSR) if info.st_uid == uid else \
        (stat.S_IRGRP, stat.S_IWGRP)
    if info.st_uid == uid or gid is not None and info.st_gid == gid and info.st_mode & read:
        if not writable or info.st_mode & write:
            return None
        return (f"is not writable for the server (mode {stat.S_IMODE(info.st_mode):o}); an "
                "output target region needs " + ("u+w" if info.st_uid == uid else "g+w"))
    rule = "its own user" + ("" if gid is None else f" or group-readable regions of gid {gid}")
    return (f"belongs to uid {info.st_uid} gid {info.st_gid} (mode "
            f"{stat.S_IMODE(info.st_mode):o}); the server reads regions of {rule}")


def listening(path: Path) -> bool:
    """Does a process accept connections on this unix socket? (ECONNREFUSED: a stale file left
    by a killed server.) Asks the kernel, not the protocol, so CURVE or a foreign program
    listening there are seen too."""
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return True         # not a socket we may use, or in use: do not take it over
        return True
