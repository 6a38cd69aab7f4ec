{#- kcm.master: for the Salt master itself (apply it on the master host's own minion).

    Installs <config_dir>/kcm.conf (default /etc/salt/master.d/kcm.conf) with
      engines:  kcm_alert (batch_wait): salt/beacon/*/kcm_leader/* in batches -> the
                kcm_alert runner's handle_batch (kcm:master:alert_engine, the default), or
      reactor:  salt/beacon/*/kcm_leader/*  ->  salt://reactor/kcm/leader.sls (one runner
                job per event; alert_engine: false), and always
                salt/beacon/*/kcm_cert/*  ->  salt://reactor/kcm/cert.sls
      kcm_alert: receivers and labels for the kcm_alert runner (pillar kcm:master)
      schedule: kcm_alert.reconcile at start and every kcm:master:reconcile_interval s, and
                kcm_alert.flush (the outbox) every kcm:master:flush_interval s, on both paths
    and syncs salt://_utils (the runners' helpers), salt://_runners (kcm_alert, kcm: the fleet
    view), salt://_engines (kcm_alert)
    and salt://_output (the fleet table, kcm_fleet) into the master's extension modules.

    The master reads `engines:`, `reactor:`, `schedule:` and `kcm_alert:` only at start: restart
    salt-master after the first apply or a change of kcm.conf (the state says so when that
    is needed). The reactor SLS itself is re-read on every event.
    master.d files are merged with list merging, so other `reactor:` entries are kept.

    With kcm:master:enroll:enabled, also salt/minion/*/start -> salt://reactor/kcm/enroll.sls
    and kcm_enroll: {grain, value} for the kcm_enroll runner (highstate a new master once).

    Settings: pillar `kcm:master` (config_dir, alertmanager_urls, webhook_urls, labels,
    ca_bundle, proxy, sync_runners, alert_engine, batch_wait, reconcile_interval, flush_interval,
    enroll); defaults in defaults.yaml. TLS to receivers is always
    verified (ca_bundle '' = the system store). #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import kcm with context %}
{%- set master = kcm.master %}
{%- set alert = {
      "alertmanager_urls": master.alertmanager_urls,
      "webhook_urls": master.webhook_urls,
      "labels": master.labels,
      "ca_bundle": master.ca_bundle,
      "proxy": master.proxy,
      "reporters": master.reporters,
    } %}
{#- The runners the master's own scheduler runs, whichever path handles the events: the
    reconcile finds what no event brought (and runs when the master starts), the flush
    retries the outbox. maxrunning 1: a slow run is not stacked by the next. #}
{%- set schedule = {
      "kcm_alert_reconcile": {"function": "kcm_alert.reconcile", "seconds": master.reconcile_interval,
                              "run_on_start": True, "maxrunning": 1},
      "kcm_alert_flush": {"function": "kcm_alert.flush", "seconds": master.flush_interval, "maxrunning": 1},
    } %}
{#- Certificate events (kcm_cert) are rare: the reactor takes them on either path. #}
{%- set conf = {"reactor": [{"salt/beacon/*/kcm_cert/*": ["salt://reactor/kcm/cert.sls"]}], "kcm_alert": alert,
              "schedule": schedule} %}
{%- if master.alert_engine %}
{%-   set engine = {"kcm_alert": {"batch_wait": master.batch_wait} } %}
{%-   do conf.update({"engines": [engine]}) %}
{%- else %}
{%-   do conf.reactor.append({"salt/beacon/*/kcm_leader/*": ["salt://reactor/kcm/leader.sls"]}) %}
{%- endif %}
{#- Opt-in enrollment: a starting minion with the control-plane grain is highstated once. #}
{%- if master.enroll.enabled %}
{%-   do conf.reactor.append({"salt/minion/*/start": ["salt://reactor/kcm/enroll.sls"]}) %}
{%-   set enroll = {"grain": master.enroll.grain, "value": master.enroll.value} %}
{%-   do conf.update({"kcm_enroll": enroll}) %}
{%- endif %}
{%- if not conf.reactor %}
{%-   do conf.pop("reactor") %}
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
                ~ " kcm_alert engine (or the kcm_leader reactor mapping), the kcm_alert settings and the"
                ~ " schedule of kcm_alert.reconcile / kcm_alert.flush") | json }}
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
