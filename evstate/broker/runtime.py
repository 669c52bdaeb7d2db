"""What the local broker runs on: a Java runtime and the broker's jars, resolved by Maven.

The jars are resolved once per Kafka version into a cache directory with
``mvn dependency:copy-dependencies`` and reused offline afterwards. A marker file written
after a complete copy tells a finished cache from one interrupted half way.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from evstate import config
from evstate.errors import JarResolutionError, JavaNotFoundError, MavenNotFoundError

KAFKA_VERSION = "4.1.1"
# Kafka logs through SLF4J 1.7; without this binding its log would be silent.
LOG4J_SLF4J_VERSION = "2.24.3"
MIN_JAVA = 17
_COMPLETE = ".complete"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>evstate.local</groupId>
  <artifactId>kafka-broker-classpath</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""


@dataclass(frozen=True, slots=True)
class Java:
    """A Java runtime found on this machine."""

    executable: str
    major: int


def default_cache_dir() -> Path:
    """Where resolved jars live (see :func:`evstate.config.default_cache_dir`)."""
    return Path(config.default_cache_dir())


def parse_java_major(version_output: str) -> int | None:
    """Read the major version from ``java -version`` output (``"17.0.15"``, ``"1.8.0_392"``).

    Returns:
        The major version, or None when the text names no version.
    """
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2) is not None:  # Java 8 and older say "1.8"
        return int(match.group(2))
    return major


def find_java(java: str | None = None) -> Java:
    """Find a Java runtime of version 17 or newer.

    Args:
        java: an explicit executable; otherwise ``$JAVA_HOME/bin/java``, then ``java`` on PATH.

    Raises:
        JavaNotFoundError: no Java, or one older than 17.
    """
    candidate = java
    if candidate is None and os.environ.get("JAVA_HOME"):
        home_java = os.path.join(os.environ["JAVA_HOME"], "bin", "java")
        candidate = home_java if os.access(home_java, os.X_OK) else None
    if candidate is None:
        candidate = shutil.which("java")
    if candidate is None:
        raise JavaNotFoundError(
            "no Java runtime found (looked at $JAVA_HOME and PATH); Apache Kafka needs "
            f"Java {MIN_JAVA}+: install OpenJDK {MIN_JAVA} "
            "(e.g. apt install openjdk-17-jre-headless) or set JAVA_HOME"
        )
    try:
        proc = subprocess.run(
            [candidate, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as exc:
        raise JavaNotFoundError(f"cannot run {candidate}: {exc}; set JAVA_HOME to a JDK") from exc
    major = parse_java_major(proc.stderr + proc.stdout)
    if major is None:
        raise JavaNotFoundError(f"{candidate} -version printed no version; set JAVA_HOME to a JDK")
    if major < MIN_JAVA:
        raise JavaNotFoundError(
            f"{candidate} is Java {major}, Apache Kafka 4 needs Java {MIN_JAVA}+: "
            f"install OpenJDK {MIN_JAVA} or point JAVA_HOME at one"
        )
    return Java(executable=candidate, major=major)


def kafka_jars(
    version: str = KAFKA_VERSION,
    *,
    cache_dir: Path | None = None,
    mvn: str | None = None,
    timeout: float = 900.0,
) -> Path:
    """Return the directory holding the broker's jars, resolving them with Maven if needed.

    Args:
        version: the Apache Kafka version (``org.apache.kafka:kafka_2.13``).
        cache_dir: the cache root; jars go to ``<cache_dir>/kafka/<version>/libs``.
        mvn: an explicit Maven executable; otherwise ``mvn`` on PATH.
        timeout: seconds Maven may take.

    Raises:
        MavenNotFoundError: the jars are not cached and there is no ``mvn``.
        JarResolutionError: Maven ran but could not resolve them (the message has its output).
    """
    home = (cache_dir or default_cache_dir()) / "kafka" / version
    libs = home / "libs"
    if (home / _COMPLETE).exists():
        return libs
    mvn_exe = mvn or shutil.which("mvn")
    if mvn_exe is None:
        raise MavenNotFoundError(
            f"the Kafka {version} jars are not cached in {home} and there is no `mvn` on PATH "
            "to resolve them: install Maven (e.g. apt install maven), or use docker/compose.yml"
        )
    home.mkdir(parents=True, exist_ok=True)
    if libs.exists():
        shutil.rmtree(libs)  # an interrupted copy: start clean
    (home / "pom.xml").write_text(_POM.format(kafka=version, log4j=LOG4J_SLF4J_VERSION))
    cmd = [
        mvn_exe,
        "-B",
        "-q",
        "-f",
        str(home / "pom.xml"),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}",
        "-DincludeScope=runtime",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise JarResolutionError(
            f"mvn took over {timeout:g}s resolving org.apache.kafka:kafka_2.13:{version}; "
            "check access to Maven Central and retry"
        ) from exc
    except OSError as exc:
        raise MavenNotFoundError(f"cannot run {mvn_exe}: {exc}; install Maven") from exc
    jars = list(libs.glob("kafka_2.13-*.jar")) if libs.exists() else []
    if proc.returncode != 0 or not jars:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise JarResolutionError(
            f"mvn could not resolve org.apache.kafka:kafka_2.13:{version} (exit "
            f"{proc.returncode}); check the version exists on Maven Central and that Maven "
            f"can reach it (settings in ~/.m2/settings.xml). Maven said:\n{tail}"
        )
    (home / _COMPLETE).write_text(version + "\n")
    return libs
