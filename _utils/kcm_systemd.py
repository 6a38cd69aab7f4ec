"""
systemd command lines, written and read the way systemd does (``systemd.syntax(7)``,
``systemd.service(5)`` "Command lines").

One function writes an argv as an ``ExecStart=`` value (:func:`command_line`), one reads
a unit's ``ExecStart=`` back into the argv systemd will execute (:func:`parse_exec_start`).
The preflight runs what the parser returns for the rendered line, so a value that only
breaks after systemd's splitting, ``$`` expansion or ``%`` specifiers is caught there.
Two read what systemd says of the running unit: ``systemctl show`` (:func:`show_properties`)
and the last error line of its journal (:func:`last_error_line`).

Called as ``__utils__["kcm_systemd.command_line"](argv)`` from modules and states.
"""

import os
import pwd
import re
import subprocess
import unicodedata

__virtualname__ = "kcm_systemd"

# Every character that systemd would split on, expand or unescape, outside quotes.
_NEEDS_QUOTES = re.compile(r"""[\s"'\\;]""")
_SPECIFIER = re.compile(r"%(.)", re.S)
_WHITESPACE = " \t\n\r"
# The C escapes systemd's cunescape knows (the ones a word written here can contain).
_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
    "'": "'",
    "s": " ",
}
_CONTINUATION = " \\\n  "
# The files of ``files`` (kcm_config.resolve) that hold a secret: KCM gets them through
# LoadCredential= (systemd 247 and later), so their sources stay root's alone (0600).
SECRET_FILES = ("kubeconfig", "key", "service_account_key", "signer_key")
CREDENTIALS_SINCE = 247
# The lines of a unit's journal that say why KCM stopped: klog's error and fatal lines, a flag
# error (printed after the usage text), a Go panic, and systemd failing to run it at all
# (credentials, exec). Not systemd's "Main process exited" and "Failed with result" lines.
_ERROR_LINE = re.compile(r"^(?:[EF]\d{4} |Error: |panic: |\S+\.service: Failed (?:to|at) )")


def __virtual__():
    return __virtualname__


def unsafe_character(text):
    """
    Return the first character of ``text`` that no unit line, SLS or log line may carry
    (control characters, including newline and tab, and the Unicode line and paragraph
    separators), or ``None``.

    Example:

    .. code-block:: python

        __utils__["kcm_systemd.unsafe_character"]('a\\nb')
    """
    for char in str(text):
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            return char
    return None


def escape_word(word):
    """
    Return ``word`` written as one word of a systemd command line: ``%`` as ``%%``,
    ``$`` as ``$$``, and, when it holds whitespace, quotes, ``\\`` or ``;``, starts with
    ``#`` or is empty,
    double-quoted with ``\\`` and ``"`` escaped. Raise ``ValueError`` for a control
    character (a newline would start a new unit directive).

    Example:

    .. code-block:: python

        __utils__["kcm_systemd.escape_word"]('--x=a b')
    """
    word = str(word)
    bad = unsafe_character(word)
    if bad is not None:
        raise ValueError(f"{word!r} holds the control character {bad!r}, which a unit line cannot carry")
    word = word.replace("%", "%%").replace("$", "$$")
    # A word starting a continuation line with '#' would be read as a comment line.
    if word and not _NEEDS_QUOTES.search(word) and not word.startswith("#"):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def command_line(argv, continuation=True):
    """
    Return ``argv`` as the value of an ``ExecStart=`` (or any ``Exec*=``) line: each word
    through :func:`escape_word`, one per line with ``\\`` continuations (``continuation``
    false: on one line).

    Example:

    .. code-block:: python

        __utils__["kcm_systemd.command_line"](["/usr/bin/kcm", "--x=a b"])  # '/usr/bin/kcm \\\n  "--x=a b"'
    """
    if not argv or not str(argv[0]).startswith("/"):
        raise ValueError(f"the command must be an absolute path, got {argv[0] if argv else None!r}")
    return (_CONTINUATION if continuation else " ").join(escape_word(word) for word in argv)


def systemd_version(grains):
    """
    Return the major version of the minion's systemd from Salt's ``systemd`` grain
    (``{"version": "252", ...}``), or ``None`` when the grain does not say.

    Example:

    .. code-block:: python

        __utils__["kcm_systemd.systemd_version"](__grains__)  # 252
    """
    match = re.match(r"\d+", str((grains.get("systemd") or {}).get("version") or ""))
    return int(match.group()) if match else None


def credentials(files, unit_name, grains):
    """
    Return how KCM gets its secrets (the kubeconfig and the private keys of ``files``) for
    the unit ``<unit_name>.service`` on a minion with ``grains``:

    - ``mode: systemd`` (systemd 247 and later, or a version the grains do not name):
      ``LoadCredential=<id>:<source>`` for each (``load``), the sources root-owned 0600,
      and KCM opens systemd's copies in ``dir``, ``/run/credentials/<unit>`` (what ``%d``
      expands to for a system service; written out so that the preflight's argv is the
      one systemd runs without expanding specifiers);
    - ``mode: group`` (older systemd, e.g. RHEL 8's 239): KCM opens the sources, which
      are root-owned and readable by the KCM group (0640) in root-owned directories.

    ``paths`` maps each secret's ``files`` key to the path KCM opens.

    Example:

    .. code-block:: python

        __utils__["kcm_systemd.credentials"](cfg["files"], "kube-controller-manager", __grains__)
    """
    version = systemd_version(grains)
    directory = f"/run/credentials/{unit_name}.service"
    if version is not None and version < CREDENTIALS_SINCE:
        return {
            "mode": "group",
            "systemd": version,
            "dir": "",
            "load": [],
            "paths": {key: files[key] for key in SECRET_FILES},
        }
    load, paths = [], {}
    for key in SECRET_FILES:
        ident = os.path.basename(files[key])
        if [ident, files[key]] not in load:
            load.append([ident, files[key]])
        paths[key] = f"{directory}/{ident}"
    return {"mode": "systemd", "systemd": version, "dir": directory, "load": load, "paths": paths}


def run_as(argv, user, timeout):
    """
    Run ``argv`` (no shell, stdin closed, output captured as text) as ``user`` with that
    user's primary group and no other groups, as the unit's ``User=`` runs KCM, when the
    caller is root and ``user`` is not: root never executes the KCM binary itself. Returns
    the ``subprocess.CompletedProcess``; raises ``subprocess.TimeoutExpired``, ``OSError``,
    ``KeyError`` (no such user).

    Example:

    .. code-block:: python

        __utils__["kcm_systemd.run_as"](["/usr/local/bin/kube-controller-manager", "--version"], "k8s", 30)
    """
    drop = {}
    if os.geteuid() == 0 and user and user != "root":
        entry = pwd.getpwnam(user)
        drop = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [], "cwd": "/"}
    return subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False, **drop
    )


# ---------------------------------------------------------------------------------------
# reading


def service_directives(unit_text):
    """
    Yield ``(key, value)`` for every directive of a unit's ``[Service]`` section, with
    ``\\`` continuations joined as systemd joins them (the backslash becomes a space;
    comment lines inside a continuation are skipped).

    Example:

    .. code-block:: python

        dict(__utils__["kcm_systemd.service_directives"](unit_text))["User"]
    """
    section, pending = None, None
    for raw in unit_text.splitlines():
        line = raw.strip()
        if pending is not None:
            if line.startswith(("#", ";")):
                continue
            pending += " " + line
        elif not line or line.startswith(("#", ";")):
            continue
        elif line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        else:
            pending = line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        if section == "Service" and "=" in pending:
            key, _, value = pending.partition("=")
            yield key.strip(), value.strip()
        pending = None
    if pending is not None:
        raise ValueError("unit ends inside a '\\' line continuation")


def _specifiers(value):
    def one(match):
        if match.group(1) != "%":
            raise ValueError(f"ExecStart uses the systemd specifier %{match.group(1)}, which is not expanded here")
        return "%"

    return _SPECIFIER.sub(one, value)


def _unescape(text, pos):
    """The character of the escape at text[pos] ('\\'), and the position after it."""
    nxt = text[pos + 1 : pos + 2]
    if nxt in _ESCAPES:
        return _ESCAPES[nxt], pos + 2
    if nxt in ("x",) and re.match(r"[0-9a-fA-F]{2}", text[pos + 2 : pos + 4]):
        return chr(int(text[pos + 2 : pos + 4], 16)), pos + 4
    if re.match(r"[0-7]{3}", text[pos + 1 : pos + 4]):
        return chr(int(text[pos + 1 : pos + 4], 8)), pos + 4
    raise ValueError(f"ExecStart holds the escape \\{nxt}, which systemd refuses")


def _words(value):
    """Split like systemd's extract_first_word(EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE)."""
    words, word, quote, bare, pos = [], None, None, True, 0
    while pos < len(value):
        char = value[pos]
        if quote:
            if char == quote:
                quote, pos = None, pos + 1
            elif char == "\\":
                char, pos = _unescape(value, pos)
                word += char
            else:
                word, pos = word + char, pos + 1
            continue
        if char in _WHITESPACE:
            if word is not None:
                words.append((word, bare))
            word, bare, pos = None, True, pos + 1
        elif char in "\"'":
            word, quote, bare, pos = word or "", char, False, pos + 1
        elif char == "\\":
            char, pos = _unescape(value, pos)
            word, bare = (word or "") + char, False
        else:
            word, pos = (word or "") + char, pos + 1
    if quote:
        raise ValueError("ExecStart has an unterminated quote")
    if word is not None:
        words.append((word, bare))
    return words


def _environment(word):
    """``$$`` -> ``$``; a ``$VAR``/``${VAR}`` reference is refused (it would be expanded)."""
    out, pos = [], 0
    while pos < len(word):
        if word[pos] == "$":
            nxt = word[pos + 1 : pos + 2]
            if nxt == "$":
                out.append("$")
                pos += 2
                continue
            if nxt == "{" or re.match(r"[A-Za-z_]", nxt):
                raise ValueError(f"ExecStart uses $VARIABLE expansion ({word[:80]!r}), which is not done here")
        out.append(word[pos])
        pos += 1
    return "".join(out)


def split_command(value):
    """
    Return the argv systemd executes for the ``ExecStart=`` value ``value``: specifiers
    (only ``%%``), quoting and C escapes, ``$$``, and the ``-``/``:``/``+``/``!`` prefixes.
    What this cannot reproduce faithfully (other specifiers, ``$VAR``, ``@``, several
    commands) raises ``ValueError``, so nothing runs a command systemd would not.

    Example:

    .. code-block:: python

        __utils__["kcm_systemd.split_command"]('/usr/bin/kcm "--x=a b"')
    """
    words = _words(_specifiers(value))
    if any(bare and word == ";" for word, bare in words):
        raise ValueError("ExecStart with several ';'-separated commands is not supported")
    argv = [_environment(word) for word, _ in words]
    while argv and argv[0][:1] in "-:+!@":
        if argv[0].startswith("@"):
            raise ValueError("ExecStart with the '@' prefix (separate argv[0]) is not supported")
        argv[0] = argv[0][1:]
    if not argv or not argv[0]:
        raise ValueError("ExecStart= names no command")
    if not argv[0].startswith("/"):
        raise ValueError(f"ExecStart command must be an absolute path, got {argv[0]!r}")
    return argv


def parse_exec_start(unit_text):
    """
    Return the argv of the single ``ExecStart=`` of a unit's ``[Service]`` section
    (an empty assignment resets the list, as in systemd).

    Example:

    .. code-block:: python

        __utils__["kcm_systemd.parse_exec_start"](unit_text)
    """
    commands = []
    for key, value in service_directives(unit_text):
        if key == "ExecStart":
            commands = [] if value == "" else commands + [value]
    if len(commands) != 1:
        raise ValueError(f"expected exactly one ExecStart= in [Service], found {len(commands)}")
    return split_command(commands[0])


def show_properties(text):
    """
    Return the ``Key=value`` lines of ``systemctl show`` output as a dict of strings.

    Example:

    .. code-block:: python

        __utils__["kcm_systemd.show_properties"]("NRestarts=3\\nExecMainStatus=1\\n")
    """
    return dict(line.split("=", 1) for line in str(text).splitlines() if "=" in line)


def last_error_line(text):
    """
    Return the last line of a unit's journal (``journalctl -o cat``) that says why KCM
    stopped (see ``_ERROR_LINE``), or None.

    Example:

    .. code-block:: python

        __utils__["kcm_systemd.last_error_line"](journal_text)
    """
    found = [line for line in str(text).splitlines() if _ERROR_LINE.match(line)]
    return found[-1] if found else None
