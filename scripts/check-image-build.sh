#!/usr/bin/env bash
# Builds the container image's binary the way `docker build .` would, without a Docker
# engine (CI has none), so that a file the build needs but the build context lacks fails
# CI (bash scripts/check-image-build.sh, from .ci/run):
#
#   1. the build context: the files .dockerignore admits, chosen with BuildKit's rules
#      (moby/patternmatcher as used by tonistiigi/fsutil: patterns in order, the last
#      one matching a path or one of its parent directories wins, `!` re-includes),
#      copied into a clean temporary folder;
#   2. every stage but the last, step by step from the Dockerfile itself (WORKDIR, ARG,
#      ENV, COPY from the context or an earlier stage, RUN with /bin/sh -c), each stage
#      in a folder of its own standing for its root file system; a RUN's
#      --mount=type=cache is a symlink to a folder kept between runs, present during
#      that RUN only (as BuildKit's mount), so a re-run reuses compiled dependencies;
#   3. the last stage's COPY and WORKDIR steps, then its ENTRYPOINT with --help.
#
# The steps run on this machine, with its Rust toolchain (the script says when its
# version differs from the builder image's tag) and its cargo registry cache standing in
# for the cache mount at /usr/local/cargo/registry. RUN steps must keep to paths relative
# to WORKDIR (they would otherwise touch this machine). Anything the script cannot
# reproduce (other mount types, heredocs, RUN in the last stage, COPY from an image)
# fails it rather than being skipped.
#
# Environment: DCW_IMAGE_CHECK_CACHE, the folder kept between runs (default
# target/image-check: the first run compiles the dependencies, a few minutes on 2 cores).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${DCW_IMAGE_CHECK_CACHE:-$repo/target/image-check}

if ! command -v python3 > /dev/null; then
    echo "installing python3 with apt"
    if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3
fi

mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dcw-image-check.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

python3 - "$repo" "$tmp" "$cache" << 'EOF'
import json, os, re, shutil, subprocess, sys, fnmatch

repo, tmp, cache = sys.argv[1:4]
started = __import__("time").monotonic()

def fail(message):
    print(f"check-image-build: FAILED: {message}", file=sys.stderr)
    sys.exit(1)

def step(message):
    print(f"\n== {message}", flush=True)

# --- .dockerignore, as BuildKit reads it ------------------------------------------------
# Ported from moby/patternmatcher (ignorefile.ReadAll, New, Pattern.compile,
# Pattern.match, MatchesUsingParentResults) and tonistiigi/fsutil (filterFS.Walk).

def go_clean(path):
    """Go's path/filepath.Clean on a slash-separated path."""
    if path == "":
        return "."
    rooted = path.startswith("/")
    parts = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(segment)
    cleaned = "/".join(parts)
    if rooted:
        return "/" + cleaned
    return cleaned or "."

def read_ignore_file(text):
    """ignorefile.ReadAll"""
    patterns = []
    for number, line in enumerate(text.split("\n")):
        line = line[:-1] if line.endswith("\r") else line
        if number == 0 and line.startswith("\ufeff"):
            line = line[1:]
        if line.startswith("#"):
            continue
        line = line.strip()
        if not line:
            continue
        invert = line[0] == "!"
        if invert:
            line = line[1:].strip()
        if line:
            line = go_clean(line)
            if len(line) > 1 and line[0] == "/":
                line = line[1:]
        patterns.append("!" + line if invert else line)
    return patterns

class Pattern:
    def __init__(self, text, exclusion):
        self.text, self.exclusion = text, exclusion
        self.kind, self.regexp = self.compile(text)

    @staticmethod
    def compile(pattern):
        """Pattern.compile, with "/" as the separator."""
        regex, kind, i, pos = "^", "exact", 0, 0
        while pos < len(pattern):
            ch = pattern[pos]
            pos += 1
            peek = pattern[pos] if pos < len(pattern) else None
            if ch == "*":
                if peek == "*":
                    pos += 1
                    if pos < len(pattern) and pattern[pos] == "/":
                        pos += 1
                    if pos >= len(pattern):
                        if kind == "exact":
                            kind = "prefix"
                        else:
                            regex += ".*"
                            kind = "regexp"
                    else:
                        regex += "(.*/)?"
                        kind = "regexp"
                    if i == 0:
                        kind = "suffix"
                else:
                    regex += "[^/]*"
                    kind = "regexp"
            elif ch == "?":
                regex += "[^/]"
                kind = "regexp"
            elif ch in ".+()|{}$":
                regex += "\\" + ch
            elif ch == "\\":
                if peek is not None:
                    regex += "\\" + peek
                    pos += 1
                    kind = "regexp"
                else:
                    regex += "\\\\"
            elif ch in "[]":
                regex += ch
                kind = "regexp"
            else:
                regex += ch
            i += 1
        if kind != "regexp":
            return kind, None
        try:
            return kind, re.compile(regex + r"\Z", re.S)
        except re.error as error:
            fail(f".dockerignore: bad pattern {pattern!r}: {error}")

    def match(self, path):
        if self.kind == "exact":
            return path == self.text
        if self.kind == "prefix":
            return path.startswith(self.text[:-2])
        if self.kind == "suffix":
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix[:1] == "/" and path == suffix[1:])
        return self.regexp.match(path) is not None

    def without_trailing_glob(self):
        text = self.text
        for tail in ("/**", "/*"):
            if text.endswith(tail):
                text = text[: -len(tail)]
        return text

class Matcher:
    """patternmatcher.New and MatchesUsingParentResults."""

    def __init__(self, lines):
        self.patterns = []
        for line in lines:
            line = line.strip()
            if not line:
                continue
            line = go_clean(line)
            exclusion = line[0] == "!"
            if exclusion:
                if len(line) == 1:
                    fail('.dockerignore: illegal exclusion pattern: "!"')
                line = line[1:]
            self.patterns.append(Pattern(line, exclusion))
        self.exclusions = any(p.exclusion for p in self.patterns)

    def matches(self, path, parent_matched):
        matched, info = False, []
        for i, pattern in enumerate(self.patterns):
            match = parent_matched[i] if parent_matched else False
            if not match:
                if pattern.exclusion != matched:
                    info.append(False)
                    continue
                match = pattern.match(path)
                if not match and not parent_matched:
                    parents = os.path.dirname(path).split("/") if "/" in path else []
                    for j in range(len(parents)):
                        if pattern.match("/".join(parents[: j + 1])):
                            match = True
                            break
            info.append(match)
            if match:
                matched = not pattern.exclusion
        return matched, info

def build_context(root, matcher):
    """The paths fsutil's filterFS.Walk sends: (relative path, is a directory)."""
    pattern_chars = set("*[]?^\\")
    only_prefix_exceptions = not any(
        p.exclusion and pattern_chars & set(p.without_trailing_glob()) for p in matcher.patterns)
    sent, sent_dirs = [], set()
    def send(path, is_dir):
        # A path sent brings its parent directories along (fsutil calls them first).
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in sent_dirs:
                sent_dirs.add(parent)
                sent.append((parent, True))
        if path not in sent_dirs:
            sent.append((path, is_dir))
            if is_dir:
                sent_dirs.add(path)
    def walk(relative, parent_info):
        for name in sorted(os.listdir(os.path.join(root, relative))):
            path = f"{relative}/{name}" if relative else name
            full = os.path.join(root, path)
            is_dir = os.path.isdir(full) and not os.path.islink(full)
            excluded, info = matcher.matches(path, parent_info)
            if excluded and is_dir and only_prefix_exceptions:
                # fsutil's shortcut: skip a directory no exception pattern reaches into.
                if not matcher.exclusions:
                    continue
                prefix = path + "/"
                if not any(p.exclusion and (p.without_trailing_glob() + "/").startswith(prefix)
                           for p in matcher.patterns):
                    continue
            if not excluded:
                send(path, is_dir)
            if is_dir:
                walk(path, info)
    walk("", None)
    return sent

step("build context: the files .dockerignore admits")
ignore_path = os.path.join(repo, ".dockerignore")
lines = read_ignore_file(open(ignore_path, encoding="utf-8").read()) if os.path.exists(ignore_path) else []
matcher = Matcher(lines)
context = os.path.join(tmp, "context")
os.mkdir(context)
files = 0
for path, is_dir in build_context(repo, matcher):
    source, target = os.path.join(repo, path), os.path.join(context, path)
    if os.path.islink(source):
        os.symlink(os.readlink(source), target)
    elif is_dir:
        os.makedirs(target, exist_ok=True)
    else:
        shutil.copy2(source, target)
    files += not is_dir
tops = sorted(os.listdir(context))
print(f".dockerignore: {len(matcher.patterns)} patterns; context: {files} files under {', '.join(tops)}")

# --- Dockerfile -----------------------------------------------------------------------

def parse_dockerfile(text):
    lines = text.split("\n")
    escape, start = "\\", 0
    for start, line in enumerate(lines):
        directive = re.match(r"^#\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(.*?)\s*$", line)
        if not directive:
            break
        if directive.group(1).lower() == "escape":
            escape = directive.group(2)
    instructions, current, first = [], None, 0
    for number, line in enumerate(lines[start:], start + 1):
        stripped = line.strip()
        if current is None:
            if not stripped or stripped.startswith("#"):
                continue
            current, first = "", number
        elif not stripped or stripped.startswith("#"):
            continue  # comments and empty lines inside a continued instruction
        continued = re.match(r"^(.*)" + re.escape(escape) + r"[ \t]*$", line)
        if continued:
            current += continued.group(1)
            continue
        current += line
        keyword, _, rest = current.strip().partition(" ")
        instructions.append((first, keyword.upper(), rest.strip()))
        current = None
    if current is not None:
        fail("Dockerfile ends inside a continued instruction")
    return instructions

def take_flags(rest):
    flags = []
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        rest = rest.lstrip()
        name, _, value = flag[2:].partition("=")
        flags.append((name, value))
    return flags, rest

def expand(text, variables):
    def replace(match):
        name = match.group(1) or match.group(4)
        op, word = match.group(2), match.group(3)
        value = variables.get(name)
        if op == ":-":
            return value if value else word
        if op == ":+":
            return word if value else ""
        return value or ""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)", replace, text)

def exec_or_words(rest):
    if rest.startswith("["):
        try:
            return json.loads(rest)
        except ValueError:
            pass
    return rest.split()

dockerfile_text = open(os.path.join(repo, "Dockerfile"), encoding="utf-8").read()
meta_args, stages = {}, []
for number, keyword, rest in parse_dockerfile(dockerfile_text):
    if keyword == "FROM":
        flags, rest = take_flags(rest)
        words = rest.split()
        name = words[2] if len(words) == 3 and words[1].lower() == "as" else str(len(stages))
        stages.append({"name": name, "base": expand(words[0], meta_args), "steps": []})
    elif not stages:
        if keyword != "ARG":
            fail(f"Dockerfile line {number}: {keyword} before the first FROM")
        name, _, default = rest.partition("=")
        meta_args[name.strip()] = default.strip().strip('"')
    else:
        stages[-1]["steps"].append((number, keyword, rest))
if len(stages) < 2:
    fail("expected a builder stage and a runtime stage")

def container_path(root, workdir, path):
    """A path in a stage's file system, as a path on this machine."""
    absolute = go_clean(path if path.startswith("/") else f"{workdir}/{path}")
    return os.path.join(root, absolute.lstrip("/"))

def matching_sources(base, pattern):
    """COPY's sources: Go filepath.Match wildcards, one path component at a time."""
    found = [base]
    for part in [p for p in go_clean(pattern).split("/") if p not in ("", ".")]:
        found = [os.path.join(d, name) for d in found if os.path.isdir(d)
                 for name in sorted(os.listdir(d)) if fnmatch.fnmatchcase(name, part)]
    return [f for f in found if os.path.lexists(f)]

def copy(number, rest, stage_roots, root, workdir, variables):
    flags, rest = take_flags(rest)
    flags = dict(flags)
    words = [expand(w, variables) for w in exec_or_words(rest)]
    if len(words) < 2:
        fail(f"Dockerfile line {number}: COPY needs a source and a destination")
    sources, destination = words[:-1], words[-1]
    if "from" in flags:
        if flags["from"] not in stage_roots:
            fail(f"Dockerfile line {number}: COPY --from={flags['from']}: only earlier stages can be reproduced")
        source_root, origin = stage_roots[flags["from"]], f"stage {flags['from']}"
    else:
        source_root, origin = context, "the build context"
    unsupported = set(flags) - {"from", "chown", "chmod", "link"}
    if unsupported:
        fail(f"Dockerfile line {number}: COPY --{', --'.join(sorted(unsupported))} is not reproduced")
    target = container_path(root, workdir, destination)
    into_dir = destination.endswith("/") or len(sources) > 1
    for source in sources:
        found = matching_sources(source_root, source.lstrip("/"))
        if not found:
            fail(f"Dockerfile line {number}: COPY {source}: not found in {origin}"
                 + (" (is it admitted by .dockerignore?)" if origin == "the build context" else ""))
        for path in found:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.copytree(path, target, symlinks=True, dirs_exist_ok=True)
            else:
                destination_file = os.path.join(target, os.path.basename(path)) \
                    if into_dir or len(found) > 1 or os.path.isdir(target) else target
                os.makedirs(os.path.dirname(destination_file), exist_ok=True)
                shutil.copy2(path, destination_file, follow_symlinks=False)
        print(f"COPY {source} ({len(found)} from {origin}) -> {destination}")

def run(number, rest, root, workdir, variables, shell, stage):
    flags, rest = take_flags(rest)
    mounts = []
    for name, value in flags:
        if name != "mount":
            fail(f"Dockerfile line {number}: RUN --{name} is not reproduced")
        options = dict(option.partition("=")[::2] for option in value.split(","))
        if options.get("type", "bind") != "cache":
            fail(f"Dockerfile line {number}: RUN --mount type={options.get('type', 'bind')} is not reproduced")
        target = options.get("target") or options.get("dst") or options.get("destination")
        if not target:
            fail(f"Dockerfile line {number}: cache mount without target")
        mount_id = options.get("id") or target
        kept = os.path.join(cache, "mounts", re.sub(r"[^A-Za-z0-9_.-]", "_", mount_id.strip("/")))
        os.makedirs(kept, exist_ok=True)
        at = container_path(root, workdir, target)
        if os.path.lexists(at):
            if os.path.islink(at):
                os.unlink(at)
            elif os.path.isdir(at) and not os.listdir(at):
                os.rmdir(at)
            else:
                fail(f"Dockerfile line {number}: cache mount target {target} exists in the stage and is not empty")
        os.makedirs(os.path.dirname(at), exist_ok=True)
        os.symlink(kept, at)
        mounts.append(at)
        inside = go_clean(target).startswith(workdir.rstrip("/") + "/")
        print(f"cache mount {target} (id={mount_id}) -> {kept}" + ("" if inside else
              " (outside WORKDIR: this machine's tools keep their own, e.g. cargo its CARGO_HOME)"))
    if re.search(r"<<-?\s*['\"]?[A-Za-z_]", rest.split("\n", 1)[0]) and not rest.startswith("["):
        fail(f"Dockerfile line {number}: heredocs in RUN are not reproduced")
    command = json.loads(rest) if rest.startswith("[") else shell + [rest]
    environment = {k: v for k, v in os.environ.items()
                   if k in ("PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME", "TMPDIR", "LANG", "LC_ALL")}
    environment.update(variables)
    print(f"RUN {rest}", flush=True)
    status = subprocess.run(command, cwd=container_path(root, workdir, "."), env=environment).returncode
    # The mounts are gone after the step, as with BuildKit (an empty mount point stays).
    for at in mounts:
        os.unlink(at)
        os.makedirs(at, exist_ok=True)
    if status != 0:
        fail(f"Dockerfile line {number} (stage {stage}): RUN exited with status {status}")

def emulate(stage, stage_roots, last):
    root = os.path.join(tmp, "stages", stage["name"])
    os.makedirs(root)
    variables, workdir, shell = {}, "/", ["/bin/sh", "-c"]
    entrypoint = None
    for number, keyword, rest in stage["steps"]:
        if keyword == "ARG":
            name, has_default, default = rest.partition("=")
            name = name.strip()
            value = default.strip().strip('"') if has_default else meta_args.get(name, "")
            variables[name] = expand(value, variables)
        elif keyword == "ENV":
            pairs = re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)', rest) if "=" in rest.split()[0] \
                else [tuple(rest.split(None, 1))]
            for name, value in pairs:
                variables[name] = expand(value.strip('"'), variables)
        elif keyword == "WORKDIR":
            workdir = go_clean(expand(rest, variables) if rest.startswith("/") else f"{workdir}/{expand(rest, variables)}")
            os.makedirs(container_path(root, workdir, "."), exist_ok=True)
        elif keyword in ("COPY", "ADD"):
            if keyword == "ADD":
                fail(f"Dockerfile line {number}: ADD is not reproduced (use COPY)")
            copy(number, rest, stage_roots, root, workdir, variables)
        elif keyword == "RUN":
            if last:
                fail(f"Dockerfile line {number}: RUN in the last stage is not reproduced")
            run(number, rest, root, workdir, variables, shell, stage["name"])
        elif keyword == "SHELL":
            shell = json.loads(rest)
        elif keyword == "ENTRYPOINT":
            entrypoint = exec_or_words(rest)
        elif keyword in ("CMD", "LABEL", "EXPOSE", "USER", "STOPSIGNAL", "VOLUME", "HEALTHCHECK", "MAINTAINER", "ONBUILD"):
            pass  # metadata: nothing to build
        else:
            fail(f"Dockerfile line {number}: {keyword} is not reproduced")
    stage_roots[stage["name"]] = root
    return root, workdir, variables, entrypoint

# The builder image's Rust against this machine's.
rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.split()
host_rust = rustc[1] if len(rustc) > 1 else "unknown"
stage_roots = {}
for index, stage in enumerate(stages):
    last = index == len(stages) - 1
    step(f"stage {stage['name']} (FROM {stage['base']})" + (": the image" if last else ""))
    tag = re.match(r"^(?:docker\.io/)?(?:library/)?rust:(\d+\.\d+(?:\.\d+)?)", stage["base"])
    if tag:
        same = host_rust == tag.group(1) or host_rust.startswith(tag.group(1) + ".")
        print(f"rustc here: {host_rust}; image: rust {tag.group(1)}"
              + ("" if same else " (differs: the steps run with this machine's toolchain)"))
    if stage["base"] in stage_roots:
        fail(f"stage {stage['name']}: FROM an earlier stage is not reproduced")
    root, workdir, variables, entrypoint = emulate(stage, stage_roots, last)

step("the image's entrypoint --help")
if not entrypoint:
    fail("the last stage has no ENTRYPOINT")
binary = container_path(root, workdir, entrypoint[0])
if not os.access(binary, os.X_OK):
    fail(f"ENTRYPOINT {entrypoint[0]} is not an executable file in the image")
environment = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")}
environment.update(variables)
result = subprocess.run([binary, *entrypoint[1:], "--help"], cwd=container_path(root, workdir, "."),
                        env=environment, capture_output=True, text=True)
if result.returncode != 0:
    fail(f"{' '.join(entrypoint)} --help exited with {result.returncode}: {result.stderr.strip()}")
print(result.stdout.strip().splitlines()[0] if result.stdout.strip() else "(no output)")
size = os.path.getsize(binary)
print(f"{entrypoint[0]}: {size / 2**20:.1f} MiB")
elapsed = __import__("time").monotonic() - started
print(f"\ncheck-image-build: OK, the image's binary builds from the context .dockerignore admits ({elapsed:.0f} s)")
EOF
