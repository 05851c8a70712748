//! The deployment files (agent/Dockerfile, examples/ecs/*) checked with the real tools, offline:
//! hadolint and checkov on the Dockerfile, cfn-lint and checkov on the CloudFormation template,
//! parliament on the IAM policy, botocore's parameter validation (the ECS API model) on the task
//! definition; plus what those tools cannot know: the files agree with each other and with the
//! binary (every health-check command is one `tally-agent` implements).
//!
//! The tools live in `.tools-venv`, which `scripts/tools-venv.sh` creates (scripts/test.sh runs
//! it first). Without it these tests fail and say so; they never skip.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_agent::ecs::EcsConfig;

/// Hang guard for one tool run (checkov takes ~15 s here); never a performance threshold.
const TOOL_DEADLINE: Duration = Duration::from_secs(300);

/// What the Dockerfile, the task definition and the template all run as the health check.
const HEALTH_CHECK: [&str; 2] = ["/usr/local/bin/tally-agent", "health"];

/// The agent's default `sink.shutdown_deadline_secs`; stopTimeout must leave room for it.
const SHUTDOWN_DEADLINE_SECS: u64 = 20;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ has a parent")
        .to_owned()
}

fn tool(name: &str) -> PathBuf {
    let path = root().join(".tools-venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `scripts/tools-venv.sh` (creates .tools-venv with hadolint, checkov, \
         cfn-lint, parliament and botocore, about two minutes) and run the tests again",
        path.display()
    );
    path
}

/// Runs a command from the repository root with no stdin, bounded by [`TOOL_DEADLINE`].
fn run(mut cmd: Command) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    // Drain both pipes on threads so a chatty tool cannot block on a full pipe.
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > TOOL_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {TOOL_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out_t.join().expect("stdout reader"),
        stderr: err_t.join().expect("stderr reader"),
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn json(rel: &str) -> Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not JSON: {e}"))
}

/// The CloudFormation template as JSON, decoded by cfn-lint's own loader (which understands the
/// short intrinsic tags such as `!Sub`; they come out as `{"Fn::Sub": ...}`).
fn template() -> Value {
    let mut cmd = Command::new(tool("python"));
    cmd.args([
        "-c",
        "import json, sys\n\
         from cfnlint.decode import decode\n\
         tpl, errors = decode(sys.argv[1])\n\
         if errors: sys.exit('\\n'.join(str(e) for e in errors))\n\
         print(json.dumps(tpl))",
        "examples/ecs/template.yaml",
    ]);
    let out = run(cmd);
    assert!(
        out.status.success(),
        "decoding the template: {}",
        text(&out)
    );
    serde_json::from_slice(&out.stdout).expect("decoder prints JSON")
}

/// A checker that must exit 0; `clean` decides whether its output shows no finding.
fn assert_clean(name: &str, cmd: Command, clean: impl Fn(&str) -> bool) {
    let out = run(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && clean(&stdout),
        "{name} reported findings: {}",
        text(&out)
    );
}

fn checkov(file: &str, framework: &str) -> Command {
    let mut cmd = Command::new(tool("checkov"));
    // --framework keeps checkov from probing other ecosystems' tools; --skip-download keeps it
    // offline (no guideline download).
    cmd.args([
        "--file",
        file,
        "--framework",
        framework,
        "--skip-download",
        "--compact",
        "--quiet",
    ]);
    cmd
}

fn checkov_clean(stdout: &str) -> bool {
    stdout.contains("Failed checks: 0,") && stdout.contains("Skipped checks: 0")
}

#[test]
fn the_dockerfile_passes_hadolint_and_checkov_and_builds_the_agent_like_the_tests_do() {
    let mut hadolint = Command::new(tool("hadolint"));
    hadolint.arg("agent/Dockerfile");
    assert_clean("hadolint", hadolint, |s| s.trim().is_empty());
    assert_clean(
        "checkov (Dockerfile)",
        checkov("agent/Dockerfile", "dockerfile"),
        checkov_clean,
    );

    // What no linter checks: the contract of this particular image.
    let dockerfile = read("agent/Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(
        froms.len(),
        2,
        "a build stage and a runtime stage: {froms:?}"
    );
    assert!(
        froms[1].contains("distroless/cc"),
        "runtime stage: {}",
        froms[1]
    );
    assert!(
        dockerfile.contains("cargo build --release --locked -p tally-agent"),
        "the image builds the agent with the workspace's own release build"
    );
    assert!(
        instructions.contains(&"USER 65532:65532"),
        "fixed non-root UID:GID"
    );
    assert!(instructions.contains(&"STOPSIGNAL SIGTERM"));
    // A volume mounted at /run/tally (Fargate bind mount) takes the image's ownership only
    // when the image declares it.
    assert!(instructions.contains(&"VOLUME [\"/run/tally\"]"));
    assert!(instructions.contains(&"ENTRYPOINT [\"/usr/local/bin/tally-agent\"]"));
    assert!(instructions.contains(&"CMD [\"run\"]"));
    let dockerignore = read(".dockerignore");
    for excluded in ["**/target", ".git", ".tools-venv", ".localstack-venv"] {
        assert!(
            dockerignore.lines().any(|l| l.trim() == excluded),
            ".dockerignore keeps {excluded} out of the build context"
        );
    }
}

#[test]
fn the_cloudformation_template_passes_cfn_lint_and_checkov() {
    let mut lint = Command::new(tool("cfn-lint"));
    lint.args(["--", "examples/ecs/template.yaml"]);
    assert_clean("cfn-lint", lint, |s| s.trim().is_empty());
    assert_clean(
        "checkov (CloudFormation)",
        checkov("examples/ecs/template.yaml", "cloudformation"),
        checkov_clean,
    );
}

#[test]
fn the_iam_policy_passes_parliament_and_grants_only_what_the_agent_uses() {
    let mut parliament = Command::new(tool("parliament"));
    parliament.args([
        "--files",
        "examples/ecs/iam-policy.json",
        "--include-community-auditors",
        "--minimum_severity",
        "INFO",
    ]);
    assert_clean("parliament", parliament, |s| s.trim().is_empty());

    let policy = json("examples/ecs/iam-policy.json");
    let tpl = template();
    let role_policy = &tpl["Resources"]["TaskRole"]["Properties"]["Policies"][0]["PolicyDocument"];
    for (file, doc) in [
        ("iam-policy.json", &policy),
        ("template.yaml TaskRole", role_policy),
    ] {
        let statements = doc["Statement"].as_array().expect("statements");
        assert_eq!(statements.len(), 3, "{file}");
        for s in statements {
            assert_eq!(s["Effect"], "Allow", "{file}");
            let actions: Vec<&str> = match &s["Action"] {
                Value::String(a) => vec![a.as_str()],
                Value::Array(a) => a.iter().map(|v| v.as_str().expect("action")).collect(),
                other => panic!("{file}: Action {other}"),
            };
            for a in &actions {
                assert!(
                    a.starts_with("cloudwatch:") && !a.contains('*'),
                    "{file}: {a}"
                );
            }
            let resource = s["Resource"].to_string();
            match s["Sid"].as_str().expect("every statement has a Sid") {
                "PublishToTheTallyNamespaceOnly" => {
                    assert_eq!(actions, ["cloudwatch:PutMetricData"], "{file}");
                    assert!(
                        s["Condition"]["StringEquals"]["cloudwatch:namespace"].is_string()
                            || s["Condition"]["StringEquals"]["cloudwatch:namespace"]["Ref"]
                                == "MetricNamespace",
                        "{file}: PutMetricData is limited by cloudwatch:namespace"
                    );
                }
                "ManageTallyAlarmsOnly" => {
                    assert!(actions.contains(&"cloudwatch:PutMetricAlarm"), "{file}");
                    assert!(
                        resource.contains(":alarm:tally-*")
                            || resource.contains(":alarm:${ManagedNamePrefix}*"),
                        "{file}: alarms limited to the managed prefix: {resource}"
                    );
                }
                "ManageTallyDashboardsOnly" => {
                    assert!(actions.contains(&"cloudwatch:PutDashboard"), "{file}");
                    assert!(
                        resource.contains(":dashboard/tally-*")
                            || resource.contains(":dashboard/${ManagedNamePrefix}*"),
                        "{file}: dashboards limited to the managed prefix: {resource}"
                    );
                }
                other => panic!("{file}: unexpected statement {other}"),
            }
        }
    }
}

/// One container of either file, with the keys spelled the task-definition way.
struct Container<'a> {
    def: &'a Value,
    pascal: bool,
}

impl Container<'_> {
    fn get(&self, camel: &str) -> &Value {
        if self.pascal {
            let mut c = camel.chars();
            let key: String = c
                .next()
                .map(|f| f.to_ascii_uppercase())
                .into_iter()
                .chain(c)
                .collect();
            &self.def[key.as_str()]
        } else {
            &self.def[camel]
        }
    }

    fn env(&self, name: &str) -> Option<&Value> {
        let (n, v) = if self.pascal {
            ("Name", "Value")
        } else {
            ("name", "value")
        };
        self.get("environment")
            .as_array()?
            .iter()
            .find(|e| e[n] == name)
            .map(|e| &e[v])
    }
}

/// The sidecar contract, checked on the task definition and on the template alike.
fn check_task(file: &str, task: &Value, pascal: bool) {
    let k = |camel: &str| {
        if pascal {
            let mut c = camel.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase())
                .into_iter()
                .chain(c)
                .collect::<String>()
        } else {
            camel.to_owned()
        }
    };
    assert_eq!(task[k("networkMode")], "awsvpc", "{file}");
    assert_eq!(task[k("requiresCompatibilities")][0], "FARGATE", "{file}");
    let containers: Vec<Container<'_>> = task[k("containerDefinitions")]
        .as_array()
        .expect("containers")
        .iter()
        .map(|def| Container { def, pascal })
        .collect();
    let app = containers
        .iter()
        .find(|c| c.get("name") == "app")
        .expect("an app container");
    let agent = containers
        .iter()
        .find(|c| c.get("name") == "tally-agent")
        .expect("a tally-agent container");

    let node = containers
        .iter()
        .find(|c| c.get("name") == "node-web")
        .expect("a node-web container (examples/node-express)");

    for c in [app, node] {
        let name = c.get("name");
        let dep = &c.get("dependsOn")[0];
        assert_eq!(dep[k("containerName")], "tally-agent", "{file}: {name}");
        assert_eq!(
            dep[k("condition")],
            "HEALTHY",
            "{file}: {name} waits for a healthy agent"
        );
    }

    let hc = agent.get("healthCheck");
    let command: Vec<&str> = hc[k("command")]
        .as_array()
        .expect("health-check command")
        .iter()
        .map(|v| v.as_str().expect("string"))
        .collect();
    assert_eq!(
        command[0], "CMD",
        "{file}: exec form (the image has no shell)"
    );
    assert_eq!(command[1..], HEALTH_CHECK, "{file}");
    // ECS's documented ranges: interval 5-300, timeout 2-60, retries 1-10, startPeriod 0-300.
    for (key, lo, hi) in [
        ("interval", 5, 300),
        ("timeout", 2, 60),
        ("retries", 1, 10),
        ("startPeriod", 0, 300),
    ] {
        let v = hc[k(key)]
            .as_u64()
            .unwrap_or_else(|| panic!("{file}: {key}"));
        assert!((lo..=hi).contains(&v), "{file}: healthCheck.{key} = {v}");
    }

    let stop = agent
        .get("stopTimeout")
        .as_u64()
        .expect("agent stopTimeout");
    let deadline: u64 = agent
        .env("TALLY_SINK__SHUTDOWN_DEADLINE_SECS")
        .and_then(Value::as_str)
        .map_or(SHUTDOWN_DEADLINE_SECS, |v| v.parse().expect("deadline"));
    assert!(
        stop >= deadline + 5 && stop <= 120,
        "{file}: stopTimeout {stop} s must leave the agent its {deadline} s flush (Fargate max 120)"
    );

    for c in [app, node, agent] {
        let name = c.get("name");
        assert_eq!(c.get("readonlyRootFilesystem"), true, "{file}: {name}");
        assert_eq!(
            c.get("linuxParameters")[k("capabilities")][k("drop")],
            serde_json::json!(["ALL"]),
            "{file}: {name} drops every capability"
        );
        assert_eq!(
            c.get("logConfiguration")[k("logDriver")],
            "awslogs",
            "{file}: {name}"
        );
    }
    assert_eq!(
        agent.get("user"),
        "65532:65532",
        "{file}: the image's non-root user"
    );

    // The app's SDK and the agent name the service and environment alike.
    assert_eq!(
        app.env("SERVICE_NAME"),
        agent.env("TALLY_SERVICE"),
        "{file}"
    );
    assert_eq!(
        app.env("ENVIRONMENT"),
        agent.env("TALLY_ENVIRONMENT"),
        "{file}"
    );
    assert!(app.env("SERVICE_NAME").is_some() && app.env("ENVIRONMENT").is_some());

    // The Node container: essential like the app, a non-root user, the same service and
    // environment, and its StatsD client pointed at the agent's [statsd] UDP address.
    assert_eq!(node.get("essential"), true, "{file}: node-web is essential");
    let user = node
        .get("user")
        .as_str()
        .expect("node-web runs as a set user");
    let uid = user.split(':').next().unwrap_or("");
    assert!(
        !uid.is_empty() && uid != "0" && uid != "root",
        "{file}: node-web runs as a non-root user, not {user}"
    );
    assert_eq!(
        node.env("SERVICE_NAME"),
        agent.env("TALLY_SERVICE"),
        "{file}"
    );
    assert_eq!(
        node.env("ENVIRONMENT"),
        agent.env("TALLY_ENVIRONMENT"),
        "{file}"
    );
    let (n, v) = if pascal {
        ("Name", "Value")
    } else {
        ("name", "value")
    };
    let statsd_env = agent
        .get("environment")
        .as_array()
        .expect("agent environment")
        .iter()
        .filter_map(|e| Some((e[n].as_str()?.to_owned(), e[v].as_str()?.to_owned())))
        .filter(|(name, _)| name.starts_with("TALLY_STATSD__"));
    let config = tally_agent::config::Config::load(None, statsd_env, &[])
        .unwrap_or_else(|e| panic!("{file}: the agent's TALLY_STATSD__ variables: {e}"));
    assert!(
        config.statsd.enabled,
        "{file}: the agent's StatsD receiver is on"
    );
    let listen: std::net::SocketAddr = config
        .statsd
        .udp_addr
        .parse()
        .unwrap_or_else(|e| panic!("{file}: statsd udp_addr {}: {e}", config.statsd.udp_addr));
    let host: std::net::IpAddr = node
        .env("STATSD_HOST")
        .and_then(Value::as_str)
        .expect("node-web sets STATSD_HOST")
        .parse()
        .expect("STATSD_HOST is an IP address");
    let port: u16 = node
        .env("STATSD_PORT")
        .and_then(Value::as_str)
        .expect("node-web sets STATSD_PORT")
        .parse()
        .expect("STATSD_PORT is a port");
    assert_eq!(
        std::net::SocketAddr::new(host, port),
        listen,
        "{file}: node-web sends StatsD where the agent listens (one network namespace in awsvpc)"
    );
    let dims = agent
        .env("TALLY_ECS__DIMENSIONS")
        .and_then(Value::as_str)
        .expect("TALLY_ECS__DIMENSIONS");
    let ecs: Result<EcsConfig, _> = toml::from_str(&format!("dimensions = {dims}"));
    assert!(
        ecs.is_ok(),
        "{file}: TALLY_ECS__DIMENSIONS = {dims}: {ecs:?}"
    );

    // Exact by default: the agent's write-ahead log sits on a task volume, so an agent
    // container that crashes and is restarted by ECS replays what it had acknowledged.
    let wal_dir = agent
        .env("TALLY_DURABILITY__DIR")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{file}: the agent sets TALLY_DURABILITY__DIR"));
    assert_eq!(
        wal_dir,
        example_config_wal_dir(),
        "{file}: the same log directory as examples/ecs/agent.toml"
    );
    let mounts = agent
        .get("mountPoints")
        .as_array()
        .unwrap_or_else(|| panic!("{file}: the agent has mountPoints"));
    let mount = mounts
        .iter()
        .find(|m| {
            m[k("containerPath")]
                .as_str()
                .is_some_and(|p| wal_dir.starts_with(&format!("{p}/")))
        })
        .unwrap_or_else(|| panic!("{file}: a volume is mounted above {wal_dir}: {mounts:?}"));
    assert_eq!(
        mount[k("containerPath")],
        "/run/tally",
        "{file}: the image's writable directory (declared VOLUME, owned by 65532)"
    );
    assert_ne!(
        mount[k("readOnly")],
        true,
        "{file}: the log's volume is writable"
    );
    let source = mount[k("sourceVolume")].as_str().expect("sourceVolume");
    let volume = task[k("volumes")]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v[k("name")] == source))
        .unwrap_or_else(|| panic!("{file}: a task volume named {source}"));
    // A bind mount of task storage (no host path, no EFS): scoped to the task, so it outlives
    // a restarted container and no other task can replay this task's log.
    for shared in [
        "host",
        "efsVolumeConfiguration",
        "dockerVolumeConfiguration",
    ] {
        assert!(
            volume[k(shared)].is_null(),
            "{file}: volume {source} is task-scoped, not {shared}"
        );
    }
    assert_eq!(
        agent.get("restartPolicy")[k("enabled")],
        true,
        "{file}: ECS restarts a crashed agent, which then replays the log"
    );
}

/// `[durability] dir` of examples/ecs/agent.toml.
fn example_config_wal_dir() -> String {
    let config: toml::Value = toml::from_str(&read("examples/ecs/agent.toml")).expect("agent.toml");
    config["durability"]["dir"]
        .as_str()
        .expect("examples/ecs/agent.toml sets [durability] dir")
        .to_owned()
}

#[test]
fn the_task_definition_is_a_valid_register_task_definition_request_for_a_sidecar() {
    let mut cmd = Command::new(tool("python"));
    cmd.args([
        "-c",
        "import json, sys, botocore.session, botocore.validate\n\
         params = json.load(open(sys.argv[1]))\n\
         op = botocore.session.get_session().get_service_model('ecs')\
             .operation_model('RegisterTaskDefinition')\n\
         report = botocore.validate.ParamValidator().validate(params, op.input_shape)\n\
         if report.has_errors(): sys.exit(report.generate_report())\n\
         print('valid')",
        "examples/ecs/task-definition.json",
    ]);
    assert_clean("botocore ParamValidator", cmd, |s| s.trim() == "valid");

    check_task(
        "task-definition.json",
        &json("examples/ecs/task-definition.json"),
        false,
    );
    let tpl = template();
    check_task(
        "template.yaml",
        &tpl["Resources"]["TaskDefinition"]["Properties"],
        true,
    );
}

/// Every health-check command in every deployment file, as argv.
fn health_check_commands() -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    let dockerfile = read("agent/Dockerfile");
    let joined = dockerfile.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.trim_start().starts_with("HEALTHCHECK"))
        .expect("the Dockerfile has a HEALTHCHECK");
    let exec = line
        .split_once(" CMD ")
        .expect("HEALTHCHECK ... CMD [...]")
        .1;
    let argv: Vec<String> = serde_json::from_str(exec.trim()).expect("exec-form JSON array");
    found.push(("agent/Dockerfile HEALTHCHECK".to_owned(), argv));

    let td = json("examples/ecs/task-definition.json");
    let tpl = template();
    let cfn = &tpl["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"];
    for (file, containers, hc, cmd) in [
        (
            "task-definition.json",
            &td["containerDefinitions"],
            "healthCheck",
            "command",
        ),
        ("template.yaml", cfn, "HealthCheck", "Command"),
    ] {
        for c in containers.as_array().expect("containers") {
            let Some(command) = c[hc][cmd].as_array() else {
                continue;
            };
            let argv: Vec<String> = command
                .iter()
                .map(|v| v.as_str().expect("string").to_owned())
                .collect();
            assert_eq!(argv[0], "CMD", "{file}: exec form");
            found.push((format!("examples/ecs/{file}"), argv[1..].to_vec()));
        }
    }
    found
}

#[test]
fn every_health_check_in_the_deployment_files_runs_a_command_the_binary_implements() {
    let commands = health_check_commands();
    assert_eq!(commands.len(), 3, "{commands:?}");
    // A port nothing listens on: the health check must fail cleanly, not with a usage error.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    for (file, argv) in commands {
        let program = Path::new(&argv[0]);
        assert_eq!(
            program.file_name().and_then(|n| n.to_str()),
            Some("tally-agent"),
            "{file}: {argv:?}"
        );
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tally-agent"));
        // As in the container: configuration comes from the environment only.
        cmd.args(&argv[1..])
            .env_clear()
            .env("TALLY_ADMIN__ADDR", dead.to_string());
        let out = run(cmd);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{file}: {argv:?}: {all}");
        assert!(
            !all.contains("Usage:") && !all.contains("unrecognized"),
            "{file}: {argv:?} is not a command the binary knows: {all}"
        );
        assert!(
            all.contains("unhealthy") && all.contains(&dead.to_string()),
            "{file}: {argv:?} says what is wrong and where it looked: {all}"
        );
    }

    // The image's ENTRYPOINT + CMD (`tally-agent run`) is a command the binary knows too.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tally-agent"));
    cmd.args(["run", "--help"]).env_clear();
    let out = run(cmd);
    assert!(
        out.status.success(),
        "tally-agent run --help: {}",
        text(&out)
    );
}

#[test]
fn the_example_agent_config_is_valid_with_the_task_definitions_environment() {
    let td = json("examples/ecs/task-definition.json");
    let agent = td["containerDefinitions"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "tally-agent")
        .expect("agent container");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tally-agent"));
    cmd.args(["validate", "--config", "examples/ecs/agent.toml"])
        .env_clear();
    for e in agent["environment"].as_array().expect("environment") {
        cmd.env(
            e["name"].as_str().expect("name"),
            e["value"].as_str().expect("value"),
        );
    }
    let out = run(cmd);
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("configuration is valid"),
        "examples/ecs/agent.toml with the task definition's TALLY_* variables: {}",
        text(&out)
    );
}

/// A template value with `!Ref` and `!Sub` of parameters replaced by the parameters' defaults
/// (what a stack created with the defaults holds).
fn with_defaults(tpl: &Value, v: &Value) -> String {
    let default = |p: &str| {
        // The one required parameter without a default: a cluster's short name, which the
        // agent publishes as ClusterName.
        if p == "ClusterName" {
            return "prod".to_owned();
        }
        match &tpl["Parameters"][p]["Default"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => panic!("parameter {p} has no default: {other}"),
        }
    };
    match v {
        Value::String(s) => s.clone(),
        Value::Object(o) if o.contains_key("Ref") => default(o["Ref"].as_str().expect("Ref")),
        Value::Object(o) if o.contains_key("Fn::Sub") => {
            let mut s = o["Fn::Sub"].as_str().expect("a plain Fn::Sub").to_owned();
            while let Some(at) = s.find("${") {
                let end = at + s[at..].find('}').expect("closing brace");
                let value = default(&s[at + 2..end]);
                s.replace_range(at..=end, &value);
            }
            s
        }
        other => panic!("cannot resolve {other}"),
    }
}

/// The names `tally-agent alarms plan` gives the configured alarms (the same function,
/// `desired_alarms`, with the [ecs] dimensions the task metadata would supply).
fn planned_alarm_names(config: &tally_agent::config::Config) -> Vec<String> {
    planned_alarms(config).into_iter().map(|a| a.name).collect()
}

/// The template's agent configuration (its environment alone), with the parameters' defaults.
fn template_agent_config(tpl: &Value) -> tally_agent::config::Config {
    let containers = tpl["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
        .as_array()
        .expect("containers");
    let agent = containers
        .iter()
        .find(|c| c["Name"] == "tally-agent")
        .expect("agent container");
    let env: Vec<(String, String)> = agent["Environment"]
        .as_array()
        .expect("environment")
        .iter()
        .map(|e| {
            (
                e["Name"].as_str().unwrap().to_owned(),
                with_defaults(tpl, &e["Value"]),
            )
        })
        .collect();
    tally_agent::config::Config::load(None, env, &[]).expect("the template's agent config")
}

/// What the task metadata gives the template's agent for its [ecs] dimensions.
fn template_ecs_values(tpl: &Value) -> Vec<(String, String)> {
    vec![
        ("ClusterName".to_owned(), "prod".to_owned()),
        (
            "TaskDefinitionFamily".to_owned(),
            with_defaults(
                tpl,
                &tpl["Resources"]["TaskDefinition"]["Properties"]["Family"],
            ),
        ),
    ]
}

fn planned_alarms(
    config: &tally_agent::config::Config,
) -> Vec<tally_agent::alarms::desired::AlarmDefinition> {
    use tally_agent::alarms::desired::desired_alarms;
    use tally_agent::alarms::Target;
    let extra: Vec<(String, String)> = config
        .ecs
        .dimensions
        .iter()
        .map(|d| (d.name().to_owned(), "from-task-metadata".to_owned()))
        .collect();
    let catalog = tally_agent::catalog::Catalog::from_config_with(config, &extra);
    let target = Target {
        namespace: &config.namespace,
        service: &config.service,
        environment: &config.environment,
        period_secs: config.period_secs,
        catalog: &catalog,
    };
    desired_alarms(&config.alarms_config(), &target).expect("the alarms are valid")
}

#[test]
fn the_services_deployment_alarms_are_the_alarms_the_agent_plans_for_the_same_config() {
    use tally_agent::config::Config;
    let tpl = template();
    let deployment = &tpl["Resources"]["Service"]["Properties"]["DeploymentConfiguration"];
    assert_eq!(deployment["Alarms"]["Enable"], true, "deployment alarms on");
    assert_eq!(deployment["Alarms"]["Rollback"], true, "rollback on alarm");
    assert_eq!(deployment["DeploymentCircuitBreaker"]["Enable"], true);
    assert_eq!(deployment["DeploymentCircuitBreaker"]["Rollback"], true);
    assert_eq!(
        tpl["Resources"]["Service"]["Properties"]["DeploymentController"]["Type"], "ECS",
        "deployment alarms work with the rolling-update controller only"
    );
    let mut in_template: Vec<String> = deployment["Alarms"]["AlarmNames"]
        .as_array()
        .expect("AlarmNames")
        .iter()
        .map(|v| with_defaults(&tpl, v))
        .collect();
    in_template.sort();

    // The template's agent, configured by its environment alone.
    let from_env = template_agent_config(&tpl);
    assert!(
        from_env.alarm_management.apply_on_start,
        "the agent creates the alarms the deployment watches"
    );
    assert_eq!(planned_alarm_names(&from_env), in_template, "template.yaml");

    // examples/ecs/agent.toml, with the same variables (service, environment, prefix).
    let file = root().join("examples/ecs/agent.toml");
    let env = vec![
        ("TALLY_SERVICE".to_owned(), from_env.service.clone()),
        ("TALLY_ENVIRONMENT".to_owned(), from_env.environment.clone()),
        (
            "TALLY_ALARM_MANAGEMENT__NAME_PREFIX".to_owned(),
            from_env.alarm_management.name_prefix.clone(),
        ),
    ];
    let from_file = Config::load(Some(&file), env, &[]).expect("examples/ecs/agent.toml");
    assert!(from_file.alarm_management.apply_on_start, "agent.toml");
    assert_eq!(planned_alarm_names(&from_file), in_template, "agent.toml");

    // They are the service-level error-rate and p99 alarms: every dimension is one the agent
    // sets itself, none a route's.
    let alarms = from_file.alarms_config().alarms;
    let templates: Vec<String> = alarms.iter().map(|a| format!("{:?}", a.template)).collect();
    assert_eq!(templates, ["ErrorRate", "Latency"]);
    assert!(alarms.iter().all(|a| a.dimensions.is_empty()));
}

#[test]
fn target_tracking_scales_on_requests_per_task_from_metrics_the_agent_publishes() {
    let tpl = template();
    let target = &tpl["Resources"]["ScalableTarget"]["Properties"];
    assert_eq!(target["ServiceNamespace"], "ecs");
    assert_eq!(target["ScalableDimension"], "ecs:service:DesiredCount");
    assert_eq!(
        target["ResourceId"]["Fn::Sub"], "service/${ClusterName}/${Service.Name}",
        "scales the service this template creates"
    );
    let min: u64 = with_defaults(&tpl, &target["MinCapacity"]).parse().unwrap();
    let max: u64 = with_defaults(&tpl, &target["MaxCapacity"]).parse().unwrap();
    assert!(1 <= min && min <= max, "capacity {min}..{max}");

    let policy = &tpl["Resources"]["RequestsPerTaskScaling"]["Properties"];
    assert_eq!(policy["PolicyType"], "TargetTrackingScaling");
    assert_eq!(policy["ScalingTargetId"]["Ref"], "ScalableTarget");
    let tt = &policy["TargetTrackingScalingPolicyConfiguration"];
    let out = tt["ScaleOutCooldown"].as_u64().expect("ScaleOutCooldown");
    let scale_in = tt["ScaleInCooldown"].as_u64().expect("ScaleInCooldown");
    assert!(
        out > 0 && scale_in >= out,
        "in ({scale_in} s) no faster than out ({out} s)"
    );
    let target_value: f64 = with_defaults(&tpl, &tt["TargetValue"]).parse().unwrap();
    assert!(target_value > 0.0);

    // Every metric the math reads is one the template's agent publishes, with exactly these
    // dimensions and values (a typo would make the policy track nothing).
    let config = template_agent_config(&tpl);
    assert!(
        config.self_metrics.cloudwatch,
        "the task count comes from the agents' own metrics"
    );
    let catalog =
        tally_agent::catalog::Catalog::from_config_with(&config, &template_ecs_values(&tpl));
    let queries = tt["CustomizedMetricSpecification"]["Metrics"]
        .as_array()
        .expect("metric math queries");
    let mut ids = Vec::new();
    for q in queries {
        let id = q["Id"].as_str().expect("Id");
        if let Some(stat) = q.get("MetricStat") {
            let m = &stat["Metric"];
            let name = m["MetricName"].as_str().unwrap();
            assert_eq!(
                with_defaults(&tpl, &m["Namespace"]),
                config.namespace,
                "{id}"
            );
            let dims: Vec<(String, String)> = m["Dimensions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    (
                        d["Name"].as_str().unwrap().to_owned(),
                        with_defaults(&tpl, &d["Value"]),
                    )
                })
                .collect();
            assert!(
                catalog.publishes(name, &dims),
                "{id}: the agent never publishes {name} with {dims:?}"
            );
            assert_eq!(q["ReturnData"], false, "{id}");
            ids.push(id.to_owned());
        }
    }
    assert_eq!(ids, ["requests", "tasks"]);
    let returned: Vec<&Value> = queries.iter().filter(|q| q["ReturnData"] == true).collect();
    assert_eq!(returned.len(), 1, "exactly one query is the tracked metric");
    let expr = returned[0]["Expression"].as_str().expect("an expression");
    for id in &ids {
        assert!(expr.contains(id.as_str()), "{expr} uses {id}");
    }
    assert_eq!(
        queries
            .iter()
            .find(|q| q["Id"] == "tasks")
            .map(|q| &q["MetricStat"]["Stat"]),
        Some(&Value::from("SampleCount")),
        "one AgentActiveSeries datum per agent per minute counts the tasks"
    );
}
