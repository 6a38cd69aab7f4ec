{#- kcm.master: for the Salt master itself (apply it on the master host's own minion).

    Installs <config_dir>/kcm.conf (default /etc/salt/master.d/kcm.conf) with
      engines:  kcm_alert (batch_wait, max_batch): salt/beacon/*/kcm_leader/* and salt/beacon/*/kcm_cert/*
                in batches -> the kcm_alert runner's handle_batch (the only alert path: it
                refuses a minion that is no KCM master by its id, in memory)
      kcm_alert: every setting of the kcm_alert runner (it keeps no default of its own): receivers
                and labels, resend_interval (open conditions re-sent by kcm_alert.flush),
                runbook_url, the receivers' retries and timeouts, the store's lifetimes and caps,
                the signature window, and `masters` / `clusters`: the KCM masters by minion id
                (pillar kcm:master:masters, required; no grain default)
      kcm_orch: the orchestrations' and the kcm_orch runner's settings (kcm:master:orch)
      schedule: kcm_alert.reconcile at start and every kcm:master:reconcile_interval s,
                kcm_alert.flush (the outbox) every kcm:master:flush_interval s, and
                kcm_orch.renew (the due certificates, rolled) every kcm:master:renew_interval s
    and syncs salt://_utils (the runners' helpers), salt://_runners (kcm_alert, kcm: the fleet
    view, kcm_enroll), salt://_engines (kcm_alert) and salt://_output (the fleet table, kcm_fleet)
    into the master's extension modules.

    The master reads `engines:`, `reactor:`, `schedule:` and `kcm_alert:` only at start: restart
    salt-master after the first apply or a change of kcm.conf (the state says so when that
    is needed). master.d files are merged with list merging, so other `reactor:` entries are kept.

    With kcm:master:enroll:enabled, also salt/minion/*/start -> salt://reactor/kcm/enroll.sls:
    the kcm_enroll runner highstates a minion of kcm:master:masters once (by id).

    Settings: pillar `kcm:master` (config_dir, alertmanager_urls, webhook_urls, labels,
    ca_bundle, proxy, sync_runners, batch_wait, max_batch, reconcile_interval, flush_interval, resend_interval,
    renew_interval, runbook_url, receiver_*, event_ttl, dedupe_*, max_seen, max_open, refusal_log_interval,
    signature_window, reconcile_timeout, masters, clusters, orch, enroll); defaults in defaults.yaml. TLS to receivers is
    always verified (ca_bundle '' = the system store). #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import kcm with context %}
{%- set master = kcm.master %}
{%- set alert = {
      "alertmanager_urls": master.alertmanager_urls,
      "webhook_urls": master.webhook_urls,
      "labels": master.labels,
      "ca_bundle": master.ca_bundle,
      "proxy": master.proxy,
      "masters": master.masters,
      "clusters": master.clusters,
      "resend_interval": master.resend_interval,
      "runbook_url": master.runbook_url,
      "receiver_retries": master.receiver_retries,
      "receiver_backoff": master.receiver_backoff,
      "receiver_timeout": master.receiver_timeout,
      "event_ttl": master.event_ttl,
      "dedupe_ttl": master.dedupe_ttl,
      "dedupe_file": master.dedupe_file,
      "max_seen": master.max_seen,
      "max_open": master.max_open,
      "refusal_log_interval": master.refusal_log_interval,
      "signature_window": master.signature_window,
      "reconcile_timeout": master.reconcile_timeout,
    } %}
{#- The runners the master's own scheduler runs: the reconcile finds what no event brought
    (and runs when the master starts), the flush retries the outbox. maxrunning 1: a slow
    run is not stacked by the next. #}
{%- set schedule = {
      "kcm_alert_reconcile": {"function": "kcm_alert.reconcile", "seconds": master.reconcile_interval,
                              "run_on_start": True, "maxrunning": 1},
      "kcm_alert_flush": {"function": "kcm_alert.flush", "seconds": master.flush_interval, "maxrunning": 1},
    } %}
{#- The daily certificate renewal: a rolling change the Salt master plans (its restarts do not
    page), never a schedule on the masters themselves, whose restart of a leader would. #}
{%- if master.renew_interval %}
{%-   do schedule.update({"kcm_orch_renew": {"function": "kcm_orch.renew", "seconds": master.renew_interval,
                                            "maxrunning": 1}}) %}
{%- endif %}
{%- set engine = {"kcm_alert": {"batch_wait": master.batch_wait, "max_batch": master.max_batch} } %}
{%- set conf = {"engines": [engine], "kcm_alert": alert, "kcm_orch": master.orch, "schedule": schedule} %}
{#- Opt-in enrollment: a starting KCM master (by id) is highstated once. #}
{%- if master.enroll.enabled %}
{%-   do conf.update({"reactor": [{"salt/minion/*/start": ["salt://reactor/kcm/enroll.sls"]}]}) %}
{%- endif %}

kcm-master-config-validated:
  kcm_config.validated:
    - name: kcm:master
    - config: {{ {"master": kcm.master} | json }}
    - section: master

kcm-master-config:
  file.serialize:
    - name: {{ (master.config_dir ~ '/kcm.conf') | json }}
    - serializer: yaml
    - dataset: {{ conf | json }}
    - mode: '0640'
    - makedirs: true
    - require:
      - kcm_config: kcm-master-config-validated

kcm-master-restart-notice:
  test.show_notification:
    - text: {{ (master.config_dir ~ "/kcm.conf changed: restart salt-master to load the"
                ~ " kcm_alert engine, the kcm_alert settings (the KCM masters by id) and the"
                ~ " schedule of kcm_alert.reconcile / kcm_alert.flush / kcm_orch.renew") | json }}
    - onchanges:
      - file: kcm-master-config

{%- if master.sync_runners %}

kcm-master-sync-runners:
  cmd.run:
    - names:
      - salt-run saltutil.sync_utils --out=quiet
      - salt-run saltutil.sync_runners --out=quiet
      - salt-run saltutil.sync_engines --out=quiet
      - salt-run saltutil.sync_output --out=quiet
    - require:
      - file: kcm-master-config
{%- endif %}
