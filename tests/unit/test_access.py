"""The access policy: which paths the pack may read and write, and which store servers it may call."""

from __future__ import annotations

from pathlib import Path

import pytest

from sketch_rag.access import AccessPolicy, load_config, normalise_url
from sketch_rag.errors import AccessDeniedError, ConfigFileError, InvalidParameterError
from tests.helpers.configs import config_path, write_config


@pytest.fixture
def comfy(tmp_path: Path) -> dict[str, Path]:
    """A ComfyUI base folder, a read-only shipped library beside it, and a folder outside everything."""
    tmp_path = tmp_path.resolve()
    folders = {name: tmp_path / "comfy" / name for name in ("user", "input", "output", "models")}
    folders["shipped"] = tmp_path / "pack" / "style_library"
    folders["outside"] = tmp_path / "outside"
    for folder in folders.values():
        folder.mkdir(parents=True)
    return folders


def policy_for(comfy: dict[str, Path]) -> AccessPolicy:
    return AccessPolicy.for_comfyui(
        writable=[comfy[n] for n in ("user", "input", "output", "models")],
        read_only=[comfy["shipped"]],
        user_dir=comfy["user"],
    )


def test_comfyui_folders_are_readable_and_writable(comfy: dict[str, Path]) -> None:
    policy = policy_for(comfy)
    for name in ("user", "input", "output", "models"):
        target = comfy[name] / "library" / "new"
        assert policy.readable(target, input_name="library_folder", base=comfy["user"]) == target.resolve()
        assert policy.writable(target, input_name="store", base=comfy["user"]) == target.resolve()


def test_an_absolute_folder_outside_is_refused_with_the_resolved_path_and_the_fix(comfy: dict[str, Path]) -> None:
    policy = policy_for(comfy)
    with pytest.raises(AccessDeniedError) as caught:
        policy.readable(str(comfy["outside"]), input_name="library_folder", base=comfy["user"])
    message = str(caught.value)
    assert "library_folder" in message and str(comfy["outside"]) in message
    assert "allowed_folders" in message and str(comfy["user"] / "sketch_rag" / "config.json") in message
    assert isinstance(caught.value, PermissionError)


def test_dot_dot_is_resolved_before_the_check(comfy: dict[str, Path]) -> None:
    policy = policy_for(comfy)
    sneaky = f"{comfy['input']}/../../outside"
    with pytest.raises(AccessDeniedError, match=str(comfy["outside"])):
        policy.readable(sneaky, input_name="library_folder", base=comfy["user"])
    with pytest.raises(AccessDeniedError):
        policy.readable("../../../outside", input_name="library_folder", base=comfy["user"] / "sketch_rag")
    inside = policy.readable(f"{comfy['input']}/a/../b", input_name="library_folder", base=comfy["user"])
    assert inside == comfy["input"].resolve() / "b"


def test_a_symlink_inside_pointing_outside_is_refused(comfy: dict[str, Path]) -> None:
    link = comfy["input"] / "escape"
    link.symlink_to(comfy["outside"], target_is_directory=True)
    policy = policy_for(comfy)
    with pytest.raises(AccessDeniedError, match="resolves to " + str(comfy["outside"].resolve())):
        policy.readable(link, input_name="library_folder", base=comfy["user"])
    with pytest.raises(AccessDeniedError):
        policy.writable(link / "new.png", input_name="store", base=comfy["user"])


def test_a_symlink_outside_pointing_inside_is_allowed_as_its_target(comfy: dict[str, Path]) -> None:
    link = comfy["outside"] / "into-comfy"
    link.symlink_to(comfy["output"], target_is_directory=True)
    resolved = policy_for(comfy).writable(link / "styles", input_name="store", base=comfy["user"])
    assert resolved == comfy["output"].resolve() / "styles"


def test_the_filesystem_root_and_home_are_refused(comfy: dict[str, Path]) -> None:
    policy = policy_for(comfy)
    with pytest.raises(AccessDeniedError, match="resolves to /,"):
        policy.readable("/", input_name="library_folder", base=comfy["user"])
    with pytest.raises(AccessDeniedError, match=str(Path.home().resolve())):
        policy.readable("~", input_name="library_folder", base=comfy["user"])


def test_a_nul_byte_or_an_empty_path_is_a_clear_error(comfy: dict[str, Path]) -> None:
    policy = policy_for(comfy)
    with pytest.raises(InvalidParameterError, match="NUL"):
        policy.readable(f"{comfy['input']}/a\x00b", input_name="library_folder", base=comfy["user"])
    with pytest.raises(InvalidParameterError, match="store is empty"):
        policy.writable("  ", input_name="store", base=comfy["user"])


@pytest.mark.parametrize("tail", ["x" * 256, "/".join(["y" * 200] * 25), "\ud800"])
def test_over_long_or_unencodable_paths_are_a_clear_error(comfy: dict[str, Path], tail: str) -> None:
    with pytest.raises(InvalidParameterError, match="store"):
        policy_for(comfy).writable(f"{comfy['output']}/{tail}", input_name="store", base=comfy["user"])


def test_relative_paths_are_read_against_the_given_base(comfy: dict[str, Path]) -> None:
    policy = policy_for(comfy)
    base = comfy["user"] / "sketch_rag" / "libraries"
    assert policy.readable("mine", input_name="library_folder", base=base) == base.resolve() / "mine"
    with pytest.raises(AccessDeniedError):
        policy.readable("mine", input_name="library_folder", base=comfy["outside"])


def test_the_shipped_library_is_read_only(comfy: dict[str, Path]) -> None:
    policy = policy_for(comfy)
    assert policy.readable(comfy["shipped"], input_name="library_folder", base=comfy["user"]) == comfy["shipped"]
    with pytest.raises(AccessDeniedError, match="shipped style library .* never written"):
        policy.writable(comfy["shipped"] / "new.png", input_name="file", base=comfy["user"])
    assert not policy.can_write(comfy["shipped"])
    listing = {"allowed_folders": [{"path": str(comfy["shipped"] / "sub"), "writable": True}]}
    write_config(config_path(comfy["user"]), listing)
    assert not policy_for(comfy).can_write(comfy["shipped"] / "sub" / "x.png")  # no listing unlocks it


def test_a_read_only_folder_inside_a_writable_one_stays_read_only(comfy: dict[str, Path]) -> None:
    nested = comfy["models"] / "style_library"
    nested.mkdir()
    policy = AccessPolicy.for_comfyui(writable=[comfy["models"]], read_only=[nested], user_dir=comfy["user"])
    assert policy.can_write(comfy["models"] / "x") and not policy.can_write(nested / "x")


def test_the_config_file_itself_is_never_writable(comfy: dict[str, Path]) -> None:
    config = write_config(config_path(comfy["user"]), {})
    with pytest.raises(AccessDeniedError, match="own config file"):
        policy_for(comfy).writable(config, input_name="file", base=comfy["user"])


def test_folders_listed_in_the_config_are_allowed_as_listed(comfy: dict[str, Path]) -> None:
    policy = policy_for(comfy)
    with pytest.raises(AccessDeniedError):
        policy.readable(comfy["outside"], input_name="library_folder", base=comfy["user"])
    read_only, writable = comfy["outside"] / "styles", comfy["outside"] / "stores"
    listing = {"allowed_folders": [str(read_only), {"path": str(writable), "writable": True}]}
    write_config(config_path(comfy["user"]), listing)
    policy = policy_for(comfy)  # built per run: the edit applies without a restart
    assert policy.readable(read_only / "a", input_name="library_folder", base=comfy["user"]) == read_only / "a"
    with pytest.raises(AccessDeniedError, match='listed read-only .*"writable": true on its entry'):
        policy.writable(read_only / "a", input_name="store", base=comfy["user"])
    assert policy.writable(writable / "s", input_name="store", base=comfy["user"]) == writable / "s"
    with pytest.raises(AccessDeniedError):
        policy.readable(comfy["outside"] / "other", input_name="library_folder", base=comfy["user"])


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("{not json", "cannot be read as JSON"),
        ("[]", "top level is a list"),
        ({"allowed_folder": []}, "unknown key"),
        ({"allowed_folders": "/srv"}, "not a list"),
        ({"allowed_folders": [{"path": "relative/dir"}]}, "is relative"),
        ({"allowed_folders": [{"path": "/srv", "writable": "yes"}]}, "writable is 'yes'"),
        ({"allowed_folders": [{"path": "/srv", "mode": "rw"}]}, "unknown key"),
        ({"allowed_folders": [{"path": "/"}]}, "filesystem root"),
        ({"allowed_folders": [7]}, r"allowed_folders\[0\]"),
        ({"allowed_store_urls": ["ftp://host:21"]}, "not an http"),
        ({"allowed_store_urls": [8000]}, "not a string"),
    ],
)
def test_a_malformed_config_names_the_file_and_the_entry(
    comfy: dict[str, Path], content: object, complaint: str
) -> None:
    config = write_config(config_path(comfy["user"]), content)
    with pytest.raises(ConfigFileError, match=complaint) as caught:
        policy_for(comfy)
    assert str(config) in str(caught.value)


def test_the_config_is_parsed_again_only_when_it_changes(comfy: dict[str, Path]) -> None:
    config = write_config(config_path(comfy["user"]), {"allowed_store_urls": ["http://a:1"]})
    first = load_config(config)
    assert load_config(config) is first  # unchanged file: the cached parse
    write_config(config_path(comfy["user"]), {"allowed_store_urls": ["http://b:2"]})
    assert load_config(config).store_urls == {"http://b:2"}


def test_store_urls_only_when_listed(comfy: dict[str, Path]) -> None:
    with pytest.raises(AccessDeniedError, match="allowed_store_urls") as caught:
        policy_for(comfy).store_url("http://evil.example:8000", input_name="store")
    assert "http://evil.example:8000" in str(caught.value) and "config.json" in str(caught.value)
    write_config(config_path(comfy["user"]), {"allowed_store_urls": ["http://Chroma.Local:8000/"]})
    policy = policy_for(comfy)
    assert policy.store_url("HTTP://chroma.local:8000", input_name="store") == "http://chroma.local:8000"
    assert policy.store_url("http://chroma.local", input_name="store") == "http://chroma.local:8000"  # default
    for other in ("http://chroma.local:8001", "https://chroma.local:8000", "http://127.0.0.1:8000"):
        with pytest.raises(AccessDeniedError):
            policy.store_url(other, input_name="store")


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("http://Host:9000", "http://host:9000"),
        ("https://host", "https://host:443"),
        ("http://host.:8000/", "http://host:8000"),
        ("http://[::1]:8000", "http://[::1]:8000"),
    ],
)
def test_urls_are_normalised_to_scheme_host_and_port(url: str, normal: str) -> None:
    assert normalise_url(url, input_name="store") == normal


@pytest.mark.parametrize(
    "url", ["http://user:pw@host:8000", "http://host:8000/api", "http://host:8000?x=1", "http://host:99999",
            "http://:8000", "file:///etc/passwd", "http://host:8000\x00"],
)
def test_urls_with_more_than_a_server_are_refused(url: str) -> None:
    with pytest.raises(InvalidParameterError, match="store"):
        normalise_url(url, input_name="store")


def test_the_cli_policy_accepts_every_path_but_keeps_the_shipped_library_read_only(comfy: dict[str, Path]) -> None:
    policy = AccessPolicy.for_cli(read_only=[comfy["shipped"]])
    assert policy.writable("~/x", input_name="--store", base=comfy["outside"]) == Path.home().resolve() / "x"
    assert policy.readable("/", input_name="--folder", base=comfy["outside"]) == Path("/")
    assert policy.writable("rel", input_name="--store", base=comfy["outside"]) == comfy["outside"] / "rel"
    assert policy.store_url("http://anywhere:1234", input_name="--store") == "http://anywhere:1234"
    with pytest.raises(AccessDeniedError):
        policy.writable(comfy["shipped"] / "x.png", input_name="--filename", base=comfy["outside"])
