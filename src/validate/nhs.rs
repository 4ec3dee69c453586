//! NHS numbers: ten digits whose last is a Modulus 11 check digit over the first nine (weights 10 down to 2).

/// The check digit for nine digits, or `None` when the sum gives 10 (no valid NHS number starts so).
pub fn check_digit(first_nine: &[u8]) -> Option<u8> {
    let sum: u32 = first_nine.iter().zip((2..=10u32).rev()).map(|(&d, w)| u32::from(d) * w).sum();
    match 11 - (sum % 11) {
        11 => Some(0),
        10 => None,
        c => Some(c as u8),
    }
}

/// True for a ten-digit string whose check digit is right.
pub fn is_valid(number: &str) -> bool {
    let b = number.as_bytes();
    if b.len() != 10 || !b.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let digits: Vec<u8> = b.iter().map(|c| c - b'0').collect();
    check_digit(&digits[..9]) == Some(digits[9])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modulus_11() {
        assert!(is_valid("9990000018"));
        assert!(!is_valid("9990000017"));
        assert!(!is_valid("999000001"));
        assert!(!is_valid("99900000a8"));
        // 999 000 001 gives a remainder that maps to 10: no valid number has these nine digits.
        assert_eq!(check_digit(&[9, 9, 9, 0, 0, 0, 0, 0, 1]), Some(8));
    }
}
