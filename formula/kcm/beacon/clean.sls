{#- Removes the formula's beacons from the running minion and from minion.d/beacons.conf
    (beacon.absent with save). Beacons live in the minion's main loop: without a running
    salt-minion (salt-call --local) there is nothing to ask, and this says so. With pillar
    `beacons:` they come from pillar, which the formula cannot write: it says what to remove. #}
{%- set current = salt['beacons.list'](return_yaml=False) %}

include:
  - {{ tpldir.split('/')[0] }}.config.paths
{%- if salt['pillar.get']('beacons', none) is not none %}

kcm-beacon-clean-in-pillar:
  test.show_notification:
    - text: pillar `beacons:` is set, so the kcm beacons come from pillar; remove kcm_leader (and kcm_cert) there
{%- elif current is not mapping %}

kcm-beacon-clean-no-minion:
  test.show_notification:
    - text: no running salt-minion answered beacons.list; any kcm beacon stays in minion.d/beacons.conf
{%- else %}
{%-   for name in ['kcm_leader', 'kcm_cert'] if name in current %}

kcm-beacon-clean-{{ name | replace('_', '-') }}:
  beacon.absent:
    - name: {{ name }}
    - save: true
    - require:
      - kcm_config: kcm-config-paths-validated
{%-   endfor %}
{%- endif %}
