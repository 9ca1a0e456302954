<?php
# Debian's wp-config.php loads this for every host name.
define('DB_NAME', 'wordpress');
define('DB_USER', 'wordpress');
define('DB_PASSWORD', 'wordpress');
# The Debian default socket, named where mariadbd creates it.
define('DB_HOST', 'localhost:/run/mysqld/mysqld.sock');
define('WP_CONTENT_DIR', '/var/lib/wordpress/wp-content');
# The site answers at whatever address it is reached by (the test reaches
# the original container and the partitioned one at different addresses).
define('WP_HOME', 'http://' . $_SERVER['HTTP_HOST']);
define('WP_SITEURL', 'http://' . $_SERVER['HTTP_HOST']);
define('FS_METHOD', 'direct');
define('DISABLE_WP_CRON', true);
$table_prefix = 'wp_';
# No network beyond this host: without these the dashboard waits on
# wordpress.org for update checks and news.
define('WP_HTTP_BLOCK_EXTERNAL', true);
define('AUTOMATIC_UPDATER_DISABLED', true);
define('WP_AUTO_UPDATE_CORE', false);
