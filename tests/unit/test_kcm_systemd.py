"""
systemd command lines: one escaping function writes ExecStart=, one parser reads it back
as systemd does (systemd.syntax(7), systemd.service(5) "Command lines").
"""

import pytest

from tests.unit.conftest import load

systemd = load("_utils", "kcm_systemd")


def unit(line):
    return f"[Unit]\nDescription=x\n\n[Service]\nUser=k8s\nExecStart={line}\nRestart=always\n"


# (ExecStart= value as a unit carries it, the argv systemd executes), from the man pages.
SYSTEMD_READS = [
    ("/bin/kcm --a=1 --b=2", ["/bin/kcm", "--a=1", "--b=2"]),
    ('/bin/kcm "--x=a b"', ["/bin/kcm", "--x=a b"]),
    ("/bin/kcm '--x=a b'", ["/bin/kcm", "--x=a b"]),
    ('/bin/kcm --x="a b"c', ["/bin/kcm", "--x=a bc"]),
    ("/bin/kcm --x=100%%", ["/bin/kcm", "--x=100%"]),
    ("/bin/kcm --x=$$HOME", ["/bin/kcm", "--x=$HOME"]),
    ('/bin/kcm "a\\"b" "c\\\\d" a\\sb', ["/bin/kcm", 'a"b', "c\\d", "a b"]),
    ("/bin/kcm \\\n  --a=1 \\\n  --b=2", ["/bin/kcm", "--a=1", "--b=2"]),
    ("-/bin/kcm --a", ["/bin/kcm", "--a"]),
    ('/bin/kcm ";"', ["/bin/kcm", ";"]),
]


@pytest.mark.parametrize("line, argv", SYSTEMD_READS)
def test_the_parser_reads_a_line_as_systemd_does(line, argv):
    assert systemd.parse_exec_start(unit(line)) == argv


@pytest.mark.parametrize(
    "line, why",
    [
        ("/bin/kcm --x=$HOME", "$VARIABLE expansion"),
        ("/bin/kcm --x=${HOME}", "$VARIABLE expansion"),
        ("/bin/kcm --x=%h", "specifier %h"),
        ("/bin/kcm --a ; /bin/rm -rf /", "several ';'-separated commands"),
        ("/bin/kcm '--a", "unterminated quote"),
        ("kcm --a", "absolute path"),
        ("@/bin/kcm kcm", "'@' prefix"),
    ],
)
def test_what_the_parser_cannot_reproduce_is_an_error(line, why):
    with pytest.raises(ValueError, match=why.replace("$", r"\$").replace("(", r"\(")):
        systemd.parse_exec_start(unit(line))


# Values that break a naive template: whitespace, quotes, backslashes, $, %, ';', '#'.
HOSTILE = [
    "a b",
    "a  b",
    'a"b',
    "a'b",
    "a\\b",
    "$HOME",
    "${HOME}",
    "$$",
    "100%",
    "%h",
    "%%",
    ";",
    "#x",
    "",
    "A=true; touch /tmp/pwned $(id)",
    "--x=\\n",
    "é ü 日本",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_every_value_round_trips_through_the_unit(value):
    argv = ["/usr/bin/kube-controller-manager", f"--feature-gates={value}", value, "--v=2"]
    assert systemd.parse_exec_start(unit(systemd.command_line(argv))) == argv


@pytest.mark.parametrize(
    "value", ["a\nExecStartPre=+/bin/sh -c id", "a\rb", "a\x00b", "a\tb", "a\x1bb", "a\u2028b", "a\u2029b", "a\u200bb"]
)
def test_a_control_character_is_refused_not_written(value):
    with pytest.raises(ValueError, match="control character"):
        systemd.command_line(["/usr/bin/kcm", f"--x={value}"])


def test_each_flag_stays_on_its_own_continuation_line():
    line = systemd.command_line(["/usr/bin/kcm", "--a=1", "--b=x y"])
    assert line == '/usr/bin/kcm \\\n  --a=1 \\\n  "--b=x y"'


# A crash-looping KCM's journal (journalctl -o cat): a bad flag prints the usage text, then the error.
LOOP_JOURNAL = """\
Started kube-controller-manager.service - Kubernetes Controller Manager v1.37.2.
I1207 06:32:36.215615    2119 serving.go:411] Generated self-signed cert in-memory
E1207 06:32:36.223029    2119 run.go:72] "command failed" err="stat /etc/k8s/kcm.kubeconfig: permission denied"
kube-controller-manager.service: Main process exited, code=exited, status=1/FAILURE
kube-controller-manager.service: Failed with result 'exit-code'.
kube-controller-manager.service: Scheduled restart job, restart counter is at 3.
Started kube-controller-manager.service - Kubernetes Controller Manager v1.37.2.
Usage:
  kube-controller-manager [flags]
      --version version[=true]   --version, --version=raw prints version information and quits
W1207 06:32:41.000000    2120 client_config.go:667] Failed to load kubeconfig, retrying
Error: unknown flag: --no-such-flag
kube-controller-manager.service: Main process exited, code=exited, status=1/FAILURE
kube-controller-manager.service: Failed with result 'exit-code'.
"""


@pytest.mark.parametrize(
    "journal, line",
    [
        (LOOP_JOURNAL, "Error: unknown flag: --no-such-flag"),
        (
            LOOP_JOURNAL.split("Usage:")[0],
            'E1207 06:32:36.223029    2119 run.go:72] "command failed" '
            'err="stat /etc/k8s/kcm.kubeconfig: permission denied"',
        ),
        (
            "kube-controller-manager.service: Failed to set up credentials: No such file or directory\n"
            "kube-controller-manager.service: Main process exited, code=exited, status=243/CREDENTIALS\n",
            "kube-controller-manager.service: Failed to set up credentials: No such file or directory",
        ),
        (
            "F1207 06:32:36.1 1 x.go:1] unable to start\ngoroutine 1 [running]:\n",
            "F1207 06:32:36.1 1 x.go:1] unable to start",
        ),
        (
            "Started kube-controller-manager.service.\nI1207 06:32:36.2 1 leaderelection.go:1] attempting to acquire\n",
            None,
        ),
        ("", None),
    ],
)
def test_the_last_error_line_is_what_kcm_or_systemd_said_when_it_stopped(journal, line):
    assert systemd.last_error_line(journal) == line


def test_show_properties_reads_systemctl_show():
    shown = systemd.show_properties("ActiveState=activating\nNRestarts=3\nExecMainStatus=1\nStatusText=\n")
    assert shown == {"ActiveState": "activating", "NRestarts": "3", "ExecMainStatus": "1", "StatusText": ""}
