use super::*;
use crate::testing::{exec, image, open, p};

#[test]
fn interpreters_are_known_by_name_line_and_what_they_read() {
    assert_eq!(CodeKind::of_program("php-fpm8.2"), Some(CodeKind::Php));
    assert_eq!(CodeKind::of_program("python3.11"), Some(CodeKind::Python));
    assert_eq!(CodeKind::of_program("perl5.36.0"), Some(CodeKind::Perl));
    assert_eq!(CodeKind::of_program("nodejs"), Some(CodeKind::Node));
    assert_eq!(CodeKind::of_program("phpize"), None);
    assert_eq!(CodeKind::of_program("nginx"), None);
    assert!(matches(
        "**/dist-packages",
        &p("/usr/lib/python3/dist-packages")
    ));
    assert!(matches(
        "/usr/lib/*/perl/*",
        &p("/usr/lib/x86_64-linux-gnu/perl/5.36")
    ));
    assert!(!matches(
        "/usr/lib/python*",
        &p("/usr/lib/python3/dist-packages")
    ));
}

#[test]
fn an_embedded_php_keeps_its_application_tree_not_the_system() {
    let fs = image(&[
        "/usr/",
        "/usr/sbin/",
        "/usr/sbin/httpd",
        "/var/",
        "/var/www/",
        "/var/www/app/",
        "/var/www/app/index.php",
        "/var/www/app/style.css",
        "/var/www/app/lib/",
        "/var/www/app/lib/Loaded.php",
        "/var/www/app/lib/Later.php",
        "/var/www/app/lib/empty/",
        "/usr/share/",
        "/usr/share/php/",
        "/usr/share/php/Pear/",
        "/usr/share/php/Pear/Mail.php",
        "/usr/share/php/Pear/Mime.php",
        "/usr/share/php/Other/",
        "/usr/share/php/Other/Unused.php",
        "/usr/share/php/Lone.php",
        "/usr/share/php/Alone.php",
    ]);
    let mut model = Model::with_image_tree(Box::new(fs.clone()));
    model.apply(&exec(1, "/usr/sbin/httpd"));
    for f in [
        "/var/www/app/index.php",
        "/var/www/app/lib/Loaded.php",
        "/usr/share/php/Pear/Mail.php",
        "/usr/share/php/Lone.php",
    ] {
        model.apply(&open(1, f, 0));
    }
    let trees = code_trees(&model, &model.executables(), &fs);
    let summary: Vec<(&str, usize, usize)> = trees
        .iter()
        .map(|t| (t.root.as_str(), t.loaded.len(), t.files.len()))
        .collect();
    assert_eq!(
        summary,
        [("/usr/share/php/Pear", 1, 2), ("/var/www/app", 2, 3)]
    );
    assert!(trees.iter().all(|t| t.kind == CodeKind::Php));
    assert!(trees[1].files.contains(&p("/var/www/app/lib/Later.php")));
}

#[test]
fn a_python_program_keeps_the_packages_it_imported_from() {
    let fs = image(&[
        "/usr/",
        "/usr/bin/",
        "/usr/bin/python3.11",
        "/usr/lib/",
        "/usr/lib/python3.11/",
        "/usr/lib/python3.11/os.py",
        "/usr/lib/python3.11/__pycache__/",
        "/usr/lib/python3.11/__pycache__/os.cpython-311.pyc",
        "/usr/lib/python3.11/__pycache__/re.cpython-311.pyc",
        "/usr/lib/python3.11/email/",
        "/usr/lib/python3.11/email/__init__.py",
        "/usr/lib/python3.11/email/mime/",
        "/usr/lib/python3.11/email/mime/text.py",
        "/usr/lib/python3.11/email/__pycache__/",
        "/usr/lib/python3.11/email/__pycache__/__init__.cpython-311.pyc",
        "/usr/lib/python3.11/tkinter/",
        "/usr/lib/python3.11/tkinter/__init__.py",
        "/srv/",
        "/srv/app/",
        "/srv/app/app.py",
        "/srv/app/views/",
        "/srv/app/views/later.py",
        "/srv/app/data.json",
    ]);
    let mut model = Model::with_image_tree(Box::new(fs.clone()));
    model.apply(&exec(1, "/usr/bin/python3.11"));
    for f in [
        "/srv/app/app.py",
        "/srv/app/data.json",
        "/usr/lib/python3.11/os.py",
        "/usr/lib/python3.11/__pycache__/os.cpython-311.pyc",
        "/usr/lib/python3.11/email/__pycache__/__init__.cpython-311.pyc",
    ] {
        model.apply(&open(1, f, 0));
    }
    let trees = code_trees(&model, &model.executables(), &fs);
    let summary: Vec<(&str, usize, usize)> = trees
        .iter()
        .map(|t| (t.root.as_str(), t.loaded.len(), t.files.len()))
        .collect();
    assert_eq!(
        summary,
        [("/srv/app", 1, 2), ("/usr/lib/python3.11/email", 1, 3)]
    );
}

#[test]
fn a_web_server_serving_scripts_is_no_interpreter_but_a_node_script_is() {
    let fs = image(&[
        "/usr/",
        "/usr/sbin/",
        "/usr/sbin/nginx",
        "/usr/bin/",
        "/usr/bin/node",
        "/opt/",
        "/opt/tool/",
        "/opt/tool/bin/",
        "/opt/tool/bin/tool = #!/usr/bin/node\n",
        "/opt/tool/lib/",
        "/opt/tool/lib/main.js",
        "/opt/tool/lib/later.js",
        "/srv/",
        "/srv/www/",
        "/srv/www/app.js",
        "/srv/www/other.js",
    ]);
    let mut model = Model::with_image_tree(Box::new(fs.clone()));
    model.apply(&exec(1, "/usr/sbin/nginx"));
    model.apply(&open(1, "/srv/www/app.js", 0));
    // The kernel runs the script's interpreter; the process's reads are
    // the script's.
    model.apply(&exec(2, "/opt/tool/bin/tool"));
    model.apply(&open(2, "/opt/tool/lib/main.js", 0));
    let trees = code_trees(&model, &model.executables(), &fs);
    let summary: Vec<(&str, &str, usize, usize)> = trees
        .iter()
        .map(|t| {
            (
                t.exe.0.as_str(),
                t.root.as_str(),
                t.loaded.len(),
                t.files.len(),
            )
        })
        .collect();
    assert_eq!(summary, [("/opt/tool/bin/tool", "/opt/tool/lib", 1, 2)]);
    assert_eq!(trees[0].kind, CodeKind::Node);
}
