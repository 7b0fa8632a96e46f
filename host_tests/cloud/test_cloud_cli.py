"""`rmkit cloud add-user|list-users|serve`: user management from the command line and clear one-line errors."""

import subprocess
import sys

from support.fixtures_cloud import ApiClient
from support.paths import REPO_ROOT


def rmkit(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "rmkit", *args], input=stdin, capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60)


def test_add_user_then_list_users_and_log_in(tmp_path, cloud_process_factory):
    db = tmp_path / "cloud.db"
    added = rmkit("cloud", "add-user", "Cli@Example.com", "--password", "long-enough-pw", "--db", str(db))
    assert added.returncode == 0, added.stderr
    assert "user cli@example.com added, user_id " in added.stdout
    user_id = added.stdout.split("user_id ")[1].strip()
    listed = rmkit("cloud", "list-users", "--db", str(db))
    assert listed.returncode == 0 and f"{user_id}  cli@example.com" in listed.stdout
    cloud = cloud_process_factory(db_path=db)
    assert ApiClient(cloud.base_url).login("cli@example.com", "long-enough-pw")["status"] == "success"


def test_add_user_reads_the_password_from_stdin(tmp_path):
    db = tmp_path / "cloud.db"
    added = rmkit("cloud", "add-user", "stdin@example.com", "--db", str(db), stdin="from-stdin-pw\n")
    assert added.returncode == 0, added.stderr
    assert "from-stdin-pw" not in added.stdout + added.stderr


def test_adding_the_same_user_twice_is_a_clear_error(tmp_path):
    db = tmp_path / "cloud.db"
    assert rmkit("cloud", "add-user", "twice@example.com", "--password", "password-1", "--db", str(db)).returncode == 0
    again = rmkit("cloud", "add-user", "twice@example.com", "--password", "password-2", "--db", str(db))
    assert again.returncode == 2
    assert again.stderr.strip() == "rmkit cloud: user twice@example.com already exists"


def test_short_password_is_refused(tmp_path):
    result = rmkit("cloud", "add-user", "short@example.com", "--password", "short", "--db", str(tmp_path / "c.db"))
    assert result.returncode == 2 and "password must be 8 to 256 characters" in result.stderr


def test_invalid_email_is_refused(tmp_path):
    result = rmkit("cloud", "add-user", "not-an-email", "--password", "password-1", "--db", str(tmp_path / "c.db"))
    assert result.returncode == 2 and "not an email address" in result.stderr


def test_list_users_of_an_empty_database_says_how_to_add_one(tmp_path):
    result = rmkit("cloud", "list-users", "--db", str(tmp_path / "c.db"))
    assert result.returncode == 0 and "rmkit cloud add-user" in result.stdout


def test_serve_without_broker_or_no_mqtt_is_a_clear_error(tmp_path):
    result = rmkit("cloud", "serve", "--db", str(tmp_path / "c.db"))
    assert result.returncode == 2
    assert "give --broker-port (and --pki) for the MQTT side, or --no-mqtt" in result.stderr


def test_serve_on_a_port_in_use_is_a_clear_error(tmp_path, cloud_process):
    result = rmkit("cloud", "serve", "--no-mqtt", "--port", str(cloud_process.port), "--db", str(tmp_path / "c.db"))
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{cloud_process.port}" in result.stderr
