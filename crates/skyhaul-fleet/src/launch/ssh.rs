//! SSH: a bash runner that starts every rank (and gateway) over `ssh HOST bash -s`.

use super::*;
use std::fmt::Write;

/// A bash function of the runner: prints the lines that write each `NAME FILE` pair's file
/// (read here, when the runner runs) into a private directory `$SKYHAUL_TLS` on the host,
/// which goes when that shell ends. The TLS key so travels only over the SSH connection, as
/// the credentials do. The trap removes the directory as the shell ends; a shell that
/// `exec`s skyhaul (the coordinator) loses its trap, so a watcher, detached from the
/// session's output, removes it once that process (the same PID) is gone.
const PEM_FILES: &str = r#"pem_files() {
  echo 'SKYHAUL_TLS="$(mktemp -d)"; trap '"'"'rm -rf "$SKYHAUL_TLS"'"'"' EXIT'
  echo '(while kill -0 $$ 2>/dev/null; do sleep 1; done; rm -rf "$SKYHAUL_TLS") </dev/null >/dev/null 2>&1 &'
  while [ "$#" -gt 0 ]; do
    printf 'cat > "$SKYHAUL_TLS/%s" <<'"'"'SKYHAUL_PEM'"'"'\n' "$1"
    cat "$2"
    # The terminator on a line of its own, the file unchanged.
    if [ -n "$(tail -c1 "$2")" ]; then echo; fi
    echo SKYHAUL_PEM
    shift 2
  done
}
"#;

impl Job {
    /// A bash runner for a host list: the coordinator on the first host, a worker on every
    /// other. The token and credentials are read from the running shell's environment and
    /// sent over each SSH connection's stdin, so they are neither in this file nor on any
    /// command line. With gateways, each gateway host gets the relay key and the
    /// destination's credentials the same way (and the fleet's hosts not those), and its
    /// gateway runs while that connection's stdin stays open: until the transfer is over.
    pub(super) fn ssh(&self) -> String {
        let mut s = String::from("#!/bin/bash\n");
        let hosts: Vec<String> = self.hosts.iter().map(|h| sh(h)).collect();
        s.push_str(&preamble("ssh", "bash THIS_FILE"));
        let _ = writeln!(s, "HOSTS=({})", hosts.join(" "));
        let _ = writeln!(
            s,
            "export SKYHAUL_HEAD=\"${{SKYHAUL_HEAD_ADDR:-${{HOSTS[0]#*@}}}}\""
        );
        // skyhaul's own key files are passed on as paths (the hosts may share them);
        // GOOGLE_APPLICATION_CREDENTIALS not, so a host without that file keeps its own ADC.
        let all: Vec<&str> = [TOKEN_ENV]
            .into_iter()
            .chain(CREDENTIAL_ENV)
            .chain(
                KEY_FILE_ENV
                    .into_iter()
                    .filter(|v| v.starts_with("SKYHAUL_")),
            )
            .chain([RELAY_KEY_ENV])
            .collect();
        let gateways = self.gateways.is_some();
        let fleet_vars: Vec<&str> = all
            .iter()
            .filter(|v| for_fleet(v, gateways))
            .copied()
            .chain(["SKYHAUL_HEAD"])
            .chain(gateways.then_some(GATEWAYS_ENV))
            .collect();
        let _ = writeln!(
            s,
            "# Prints `export NAME=VALUE` for each variable named that is set."
        );
        let _ = writeln!(s, "exports() {{");
        let _ = writeln!(s, "  for v in \"$@\"; do");
        let _ = writeln!(
            s,
            "    if [ -n \"${{!v:-}}\" ]; then printf 'export %s=%q\\n' \"$v\" \"${{!v}}\"; fi"
        );
        let _ = writeln!(s, "  done");
        let _ = writeln!(s, "}}");
        let _ = writeln!(s, "FLEET_VARS=({})", fleet_vars.join(" "));
        let _ = writeln!(s, "pids=()");
        let mut rank_tls = "";
        if let Some(g) = &self.gateways {
            let gw_vars: Vec<&str> = all.iter().filter(|v| for_gateways(v)).copied().collect();
            let gw_hosts: Vec<String> = g.hosts.iter().map(|h| sh(h)).collect();
            s.push_str(&relay_key_check());
            let _ = writeln!(s, "GATEWAY_HOSTS=({})", gw_hosts.join(" "));
            let _ = writeln!(s, "GATEWAY_VARS=({})", gw_vars.join(" "));
            let _ = writeln!(
                s,
                "if [ -z \"${{{GATEWAYS_ENV}:-}}\" ]; then\n  \
                 for h in \"${{GATEWAY_HOSTS[@]}}\"; do {GATEWAYS_ENV}+=\"${{h#*@}}:{port},\"; done\n  \
                 {GATEWAYS_ENV}=\"${{{GATEWAYS_ENV}%,}}\"\n\
                 fi\n\
                 export {GATEWAYS_ENV}",
                port = g.port
            );
            let mut gateway_tls = "";
            if let Some(tls) = &g.tls {
                s.push_str(PEM_FILES);
                let _ = writeln!(
                    s,
                    "GATEWAY_TLS=({} {} {} {})",
                    TLS_FILES[0],
                    sh(&tls.cert),
                    TLS_FILES[1],
                    sh(&tls.key)
                );
                gateway_tls = " pem_files \"${GATEWAY_TLS[@]}\";";
                if let Some(ca) = &tls.ca {
                    let _ = writeln!(s, "RANK_TLS=({} {})", TLS_FILES[2], sh(ca));
                    rank_tls = " if [ \"$i\" = 0 ]; then pem_files \"${RANK_TLS[@]}\"; fi;";
                }
            }
            // The gateway exits when the coordinator tells it the transfer is over; the end
            // of this SSH session's input (the runner's end) stops it otherwise.
            let script = format!(
                "{} &\ngw=$!\nread -r _ || true\nkill \"$gw\" 2>/dev/null || true\nwait \"$gw\" || true\n",
                self.gateway_script(g, false, Backend::Ssh).trim_end()
            );
            let _ = writeln!(s, "GATEWAY_SCRIPT={}", sh(&script));
            let _ = writeln!(s, "STATE=\"$(mktemp -d)\"");
            let _ = writeln!(s, "trap 'rm -rf \"$STATE\"' EXIT");
            let _ = writeln!(s, "gateway_pids=()");
            let _ = writeln!(s, "for h in \"${{GATEWAY_HOSTS[@]}}\"; do");
            let _ = writeln!(
                s,
                "  {{ exports \"${{GATEWAY_VARS[@]}}\";{gateway_tls} echo \"$GATEWAY_SCRIPT\"; while [ ! -e \"$STATE/done\" ]; do sleep 1; done; }} | ssh -o BatchMode=yes \"$h\" bash -s &"
            );
            let _ = writeln!(s, "  gateway_pids+=($!)");
            let _ = writeln!(s, "done");
        }
        let _ = writeln!(
            s,
            "RANK_SCRIPT={}",
            sh(&self.rank_script("SKYHAUL_RANK", "SKYHAUL_HEAD", Backend::Ssh))
        );
        let _ = writeln!(s, "for i in \"${{!HOSTS[@]}}\"; do");
        let _ = writeln!(
            s,
            "  {{ exports \"${{FLEET_VARS[@]}}\";{rank_tls} echo \"export SKYHAUL_RANK=$i\"; echo \"$RANK_SCRIPT\"; }} | ssh -o BatchMode=yes \"${{HOSTS[$i]}}\" bash -s &"
        );
        let _ = writeln!(s, "  pids+=($!)");
        let _ = writeln!(s, "done");
        let _ = writeln!(s, "# The coordinator's exit code is the transfer's.");
        let _ = writeln!(s, "status=0; wait \"${{pids[0]}}\" || status=$?");
        let _ = writeln!(
            s,
            "for p in \"${{pids[@]:1}}\"; do wait \"$p\" || true; done"
        );
        if self.gateways.is_some() {
            let _ = writeln!(s, "touch \"$STATE/done\"");
            let _ = writeln!(
                s,
                "for p in \"${{gateway_pids[@]}}\"; do wait \"$p\" || true; done"
            );
        }
        let _ = writeln!(s, "exit $status");
        s
    }
}
