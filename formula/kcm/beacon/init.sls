{#- kcm.beacon: the kcm_leader beacon on this master, watching the KCM leader Lease, and the
    kcm_cert beacon, watching the expiry of its certificates.

    Where the beacon config lives, and why:
    Salt runs beacons from ONE place. When pillar defines `beacons:`, the beacons of the
    minion config (minion.d) are silently not run (salt/modules/config.py merge with
    omit_opts). So:
    - no pillar `beacons:` (the usual case): `beacon.present` with `save: True` adds
      each beacon to the running minion at once (no restart) and persists it in
      <conf_dir>/minion.d/beacons.conf, the file Salt's own beacons.save manages;
    - pillar `beacons:` present: the formula cannot write pillar, so this state checks
      that pillar carries both entries and fails, printing the entry to add, when
      it does not (adding it to minion.d would look fine and never run).
    Settings: pillar `kcm:beacon` (enabled, interval; debounce, stale_after, timeout,
    healthy_for for kcm_leader; cert_thresholds, cert_check_interval for kcm_cert); defaults in
    defaults.yaml. interval is in seconds with the minion's default loop_interval: 1.
    Needs a running salt-minion (beacons live in its main loop), not salt-call --local. #}
{%- from tpldir ~ "/map.jinja" import kcm with context %}
{%- set beacon = kcm.beacon %}
{%- set beacons = {
      "kcm_leader": [
        {"interval": beacon.interval},
        {"debounce": beacon.debounce},
        {"stale_after": beacon.stale_after},
        {"timeout": beacon.timeout},
        {"healthy_for": beacon.healthy_for},
        {"disable_during_state_run": false},
      ],
      "kcm_cert": [
        {"interval": beacon.interval},
        {"cert_thresholds": beacon.cert_thresholds},
        {"cert_check_interval": beacon.cert_check_interval},
        {"disable_during_state_run": false},
      ],
    } %}
{%- set pillar_beacons = salt["pillar.get"]("beacons", none) %}

kcm-beacon-sync-beacons:
  saltutil.sync_beacons:
    - refresh: true

{%- for name, settings in beacons | dictsort %}
{%- if pillar_beacons is not none %}

kcm-beacon-config-in-pillar-{{ name }}:
  {%- if name in pillar_beacons %}
  test.succeed_without_changes:
    - comment: {{ name }} is configured by pillar `beacons:{{ name }}` (pillar beacons replace minion-config beacons)
  {%- else %}
  test.fail_without_changes:
    - comment: >-
        pillar `beacons:` is set, so Salt ignores beacons from the minion config: add
        `{{ name }}: {{ settings | json }}` under pillar `beacons:` instead
  {%- endif %}
    - require:
      - saltutil: kcm-beacon-sync-beacons

{%- elif beacon.enabled %}

kcm-beacon-present-{{ name }}:
  beacon.present:
    - name: {{ name }}
    - save: true
    {%- for item in settings %}
    {%- for key, value in item.items() %}
    - {{ key }}: {{ value | json }}
    {%- endfor %}
    {%- endfor %}
    # The minion's main process reloads its beacons after the sync asynchronously; until it
    # has, beacons.add answers "not available" (seen on Salt 3006).
    - retry:
        attempts: 10
        interval: 2
    - require:
      - saltutil: kcm-beacon-sync-beacons

{%- else %}

kcm-beacon-absent-{{ name }}:
  beacon.absent:
    - name: {{ name }}
    - save: true
{%- endif %}
{%- endfor %}
