"""A throwaway OpenLDAP server for tests: own config and database in a tmp dir, 127.0.0.1 only.

It serves ``ldap://`` (StartTLS offered) and ``ldaps://`` with a CA made on the fly, keeps
``memberOf`` with the memberof overlay, and knows a few Active Directory attributes (binary
``objectGUID`` / ``objectSid``, ``sAMAccountName``) through a small schema of its own.
The root DN bypasses every limit, so syncs bind as ``cn=svc``, who gets ``sizelimit``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import itertools
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ldap3 import MODIFY_DELETE, MODIFY_REPLACE, Connection, Server

SLAPD = Path("/usr/sbin/slapd")
SUFFIX = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "secret"
SERVICE_DN = f"cn=svc,{SUFFIX}"
SERVICE_PASSWORD = "svc-Pw-7Qx2-never-logged"  # distinctive: tests look for it in every log line
SIZE_LIMIT = 10  # low on purpose: a sync must page past it

AD_SCHEMA = """
attributetype ( 1.3.6.1.4.1.55555.1.1 NAME 'objectGUID'
  DESC 'Active Directory style binary GUID' EQUALITY octetStringMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.55555.1.2 NAME 'objectSid'
  DESC 'Active Directory style binary SID' EQUALITY octetStringMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.55555.1.3 NAME 'sAMAccountName'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
objectclass ( 1.3.6.1.4.1.55555.2.1 NAME 'adLikeUser' SUP top AUXILIARY
  MAY ( objectGUID $ objectSid $ sAMAccountName ) )
"""


class SlapdUnavailable(RuntimeError):
    """slapd is not installed or did not start."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SlapdServer:
    """Start, fill and stop one slapd process that this object owns (by its pid)."""

    def __init__(self, directory: Path, size_limit: int = SIZE_LIMIT):
        self.directory = directory
        self.size_limit = size_limit
        self.process: subprocess.Popen | None = None
        self.port = self.ldaps_port = 0
        self._ou_numbers = itertools.count(1)

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    @property
    def ca_file(self) -> str:
        return str(self.directory / "ca.pem")

    def start(self, timeout: float = 10) -> None:
        if not SLAPD.exists():
            raise SlapdUnavailable(f"{SLAPD} is not installed (apt-get install slapd ldap-utils)")
        (self.directory / "db").mkdir(parents=True, exist_ok=True)
        self._write_certificates()
        (self.directory / "ad.schema").write_text(AD_SCHEMA)
        (self.directory / "slapd.conf").write_text(self._config())
        for _ in range(3):  # a free port can be taken between free_port() and slapd's bind
            self.port, self.ldaps_port = free_port(), free_port()
            if self._launch(timeout):
                try:
                    self._seed()
                except BaseException:
                    self.stop()
                    raise
                return
        raise SlapdUnavailable(f"slapd did not start: {self._stderr()}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    @contextlib.contextmanager
    def connect(self, dn: str = ADMIN_DN, password: str = ADMIN_PASSWORD) -> Iterator[Connection]:
        """Give a bound connection, unbound after (ldap3's own ``with`` leaves it open)."""
        server = Server(self.url, connect_timeout=5)
        connection = Connection(server, dn, password, auto_bind=True, receive_timeout=10)
        try:
            yield connection
        finally:
            connection.unbind()

    def new_tree(self) -> DirectoryTree:
        """Give a fresh ``ou=tN`` subtree with people and groups, so tests never share entries."""
        tree = DirectoryTree(self, f"ou=t{next(self._ou_numbers)},{SUFFIX}")
        tree.create()
        return tree

    def _launch(self, timeout: float) -> bool:
        urls = f"{self.url}/ {self.ldaps_url}/"
        log = (self.directory / "slapd.stderr").open("w")
        # -d 0: stay in the foreground, so this object owns the pid and reaps it on stop
        self.process = subprocess.Popen(
            [str(SLAPD), "-d", "0", "-f", str(self.directory / "slapd.conf"), "-h", urls],
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.05)
        self.stop()
        return False

    def _stderr(self) -> str:
        path = self.directory / "slapd.stderr"
        return path.read_text().strip()[-2000:] if path.exists() else "(no output)"

    def _config(self) -> str:
        d = self.directory
        return f"""
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
include {d}/ad.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile {d}/slapd.pid
argsfile {d}/slapd.args
loglevel none
TLSCACertificateFile {d}/ca.pem
TLSCertificateFile {d}/server.pem
TLSCertificateKeyFile {d}/server.key
sizelimit size.soft={self.size_limit} size.hard={self.size_limit} size.prtotal=unlimited
database mdb
maxsize 104857600
suffix "{SUFFIX}"
rootdn "{ADMIN_DN}"
rootpw {ADMIN_PASSWORD}
directory {d}/db
index objectClass eq
index uid,cn,mail eq
access to attrs=userPassword by self write by anonymous auth by * none
access to * by * read
overlay memberof
"""

    def _write_certificates(self) -> None:
        """A CA and a server certificate for 127.0.0.1 / localhost (PEM, for slapd and ldap3)."""
        now = dt.datetime.now(dt.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Nomaflow test CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        server = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        (self.directory / "ca.pem").write_bytes(ca.public_bytes(pem))
        (self.directory / "server.pem").write_bytes(server.public_bytes(pem))
        key_path = self.directory / "server.key"
        key_path.write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        os.chmod(key_path, 0o600)

    def _seed(self) -> None:
        with self.connect() as admin:
            _add(admin, SUFFIX, ["top", "dcObject", "organization"], o="Example", dc="example")
            _add(
                admin,
                SERVICE_DN,
                ["organizationalRole", "simpleSecurityObject"],
                cn="svc",
                userPassword=SERVICE_PASSWORD,
            )


def _add(connection: Connection, dn: str, classes: list[str], **attributes) -> None:
    if not connection.add(dn, classes, attributes):
        result = connection.result
        raise RuntimeError(f"cannot add {dn}: {result['description']} {result['message']}")


@dataclass
class DirectoryTree:
    """One test's own subtree: ``ou=people`` and ``ou=groups`` under ``base``."""

    server: SlapdServer
    base: str
    guids: dict[str, uuid.UUID] = field(default_factory=dict)

    @property
    def people(self) -> str:
        return f"ou=people,{self.base}"

    @property
    def groups(self) -> str:
        return f"ou=groups,{self.base}"

    def user_dn(self, uid: str) -> str:
        return f"uid={uid},{self.people}"

    def group_dn(self, cn: str) -> str:
        return f"cn={cn},{self.groups}"

    def create(self) -> None:
        with self.server.connect() as admin:
            _add(admin, self.base, ["organizationalUnit"], ou=self.base.split(",")[0][3:])
            _add(admin, self.people, ["organizationalUnit"], ou="people")
            _add(admin, self.groups, ["organizationalUnit"], ou="groups")

    def add_users(self, count: int, start: int = 1) -> list[str]:
        """Add inetOrgPerson users user<N> (cn "User N", mail user<N>@example.org)."""
        uids = [f"user{n}" for n in range(start, start + count)]
        with self.server.connect() as admin:
            for uid in uids:
                self._add_user(admin, uid)
        return uids

    def add_user(self, uid: str, **attributes) -> str:
        with self.server.connect() as admin:
            self._add_user(admin, uid, **attributes)
        return self.user_dn(uid)

    def _add_user(self, admin: Connection, uid: str, **attributes) -> None:
        number = uid.removeprefix("user")
        guid = self.guids.setdefault(uid, uuid.uuid4())
        values = {
            "uid": uid,
            "cn": f"User {number}",
            "sn": f"Number{number}",
            "mail": f"{uid}@example.org",
            "objectGUID": guid.bytes_le,  # how AD stores it: the first three fields little-endian
            "userPassword": f"pw-{uid}",
            **attributes,
        }
        values = {k: v for k, v in values.items() if v is not None}
        _add(admin, self.user_dn(uid), ["inetOrgPerson", "adLikeUser"], **values)

    def add_group(self, cn: str, members: list[str]) -> str:
        """Add a groupOfNames (users first: the memberof overlay fills their memberOf)."""
        with self.server.connect() as admin:
            _add(
                admin,
                self.group_dn(cn),
                ["groupOfNames"],
                cn=cn,
                member=[self.user_dn(uid) for uid in members],
            )
        return self.group_dn(cn)

    def add_entry(self, dn: str, classes: list[str], **attributes) -> str:
        with self.server.connect() as admin:
            _add(admin, dn, classes, **attributes)
        return dn

    def set_members(self, cn: str, members: list[str]) -> None:
        with self.server.connect() as admin:
            changes = {"member": [(MODIFY_REPLACE, [self.user_dn(uid) for uid in members])]}
            if not admin.modify(self.group_dn(cn), changes):
                raise RuntimeError(f"cannot change the members of {cn}: {admin.result}")

    def modify_user(self, uid: str, **attributes) -> None:
        changes = {
            name: [(MODIFY_DELETE, [])] if value is None else [(MODIFY_REPLACE, value)]
            for name, value in attributes.items()
        }
        with self.server.connect() as admin:
            if not admin.modify(self.user_dn(uid), changes):
                raise RuntimeError(f"cannot modify {uid}: {admin.result}")

    def delete_user(self, uid: str) -> None:
        with self.server.connect() as admin:
            if not admin.delete(self.user_dn(uid)):
                raise RuntimeError(f"cannot delete {uid}: {admin.result}")
