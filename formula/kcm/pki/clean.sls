{#- Removes every PKI file the formula may have laid down (the cluster signer's pair too),
    after the kubeconfig that embeds them, then the PKI directory when nothing else is in it. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import kcm with context %}
{%- set files = kcm.files %}

include:
  - {{ tplroot }}.kubeconfig.clean

kcm-pki-clean-files:
  file.absent:
    - names:
{%- set paths = [] %}
{%- for key in ['ca_cert', 'ca_key', 'cert', 'key', 'service_account_key', 'signer_cert', 'signer_key'] %}
{%-   if files[key] not in paths %}{% do paths.append(files[key]) %}{% endif %}
{%- endfor %}
{%- for path in paths %}
      - {{ path | json }}
{%- endfor %}
    - require:
      - sls: {{ tplroot }}.kubeconfig.clean

kcm-pki-clean-directory:
  kcm_install.empty_directories_absent:
    - name: kcm-pki
    - directories: {{ [kcm.paths.pki] | json }}
    - require:
      - file: kcm-pki-clean-files
